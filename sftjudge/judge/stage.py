"""The judge stage: pointwise judging, pairwise against the champion, cheap metrics, health and the suite.

Judgments are appended to a per-run cache item by item, so a retried stage only judges what is missing. Every
record carries the judge's identity (definition digest + model fingerprint), so a later run compares only with
scores from the same judge.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftjudge.config import JudgeConfig, RunConfig
from sftjudge.judge.anchors import (
    anchor_degradation,
    anchor_scores,
    anchor_summary,
    anchor_warnings,
    normalised,
)
from sftjudge.judge.cache import CachedJudge, JudgmentCache
from sftjudge.judge.calibrate import load_calibration
from sftjudge.judge.health import judge_health
from sftjudge.judge.metrics import FormatRule, aggregate, item_metrics
from sftjudge.judge.model import LoadedJudge
from sftjudge.judge.pairwise import combine_orders, outcome_json, summarise
from sftjudge.judge.rubric import dimension_means
from sftjudge.judge.spec import JudgeSpec, judge_item, load_judge
from sftjudge.judge.suite import judge_suite
from sftjudge.models.encoder import SentenceEncoder, resolve_encoder
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_jsonl, write_jsonl
from sftjudge.run.registry import Registry
from sftjudge.run.stage import StageContext, run_stage
from sftjudge.runtime.oom import with_smaller_batch_on_oom


def judge_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Score every generation against its reference with the local judge (and pairwise against the champion's
    answers when there is a champion), plus cheap metrics, the judge's health and the regression suite."""
    return run_stage("judge", run_path, config, _judge)


def _judge(ctx: StageContext) -> None:
    run, config = ctx.run, ctx.config
    champion = Registry.in_runs_dir(config.runs_dir).champion()
    champion_dir = champion["run_dir"] if champion and champion["run_id"] != run.run_id else None

    def attempt(batch_size: int) -> dict[str, Any]:
        smaller = config.model_copy(update={"judge": config.judge.model_copy(update={"batch_size": batch_size})})
        return judge_run(run, smaller, ctx.home, champion_dir)

    metrics = with_smaller_batch_on_oom(attempt, config.judge.batch_size)
    ctx.record.outputs = {"judgments": files.JUDGMENTS, "metrics": files.METRICS}
    if metrics["pairwise"]:
        ctx.record.outputs["pairwise"] = files.PAIRWISE
    ctx.record.counts = {"items": metrics["items"], "judge_score_mean": metrics["judge_score_mean"],
                         "exact_match": metrics["cheap"].get("exact_match"),
                         "judge_valid": metrics["health"]["valid"],
                         "win_rate_vs_champion": (metrics["pairwise"] or {}).get("win_rate"),
                         "regression_mean": (metrics["regression"] or {}).get("run_mean")}


def judge_run(run: RunDir, config: RunConfig, home: Path, champion_dir: str | None) -> dict[str, Any]:
    """Judge generations.jsonl pointwise (and pairwise vs the champion, and the regression suite's answers against
    the base model's); write judgments, metrics and health; return the metrics."""
    judge = config.judge
    generations = read_jsonl(run / files.GENERATIONS)
    loaded = LoadedJudge(config, home, log=run / files.VLLM_JUDGE_LOG)
    try:
        judging = CachedJudge(loaded=loaded, cache=JudgmentCache(run / files.JUDGMENT_CACHE).load(),
                              batch_size=judge.batch_size)
        spec = load_judge(Path(judge.judges_dir), judge.judge)
        identity = loaded.identity(spec)
        clock = Stopwatch()  # seconds per part of the stage, in metrics.json: where a judge stage's time goes
        encoder, rule = _encoder(judge, home), _format_rule(judge)
        # Pointwise first, for the run's and the base model's answers: the rubric then reuses each answer's keys and
        # values (judge/prefix.py) instead of computing them again.
        pointwise = clock("pointwise", judging.judge, spec, [judge_item(g) for g in generations])
        baseline = clock("base model", _judge_baseline, run, judging, spec,
                         lambda gens: cheap_metrics(gens, rule, encoder))
        dimensions = clock("rubric", _dimensions, run, judging, judge, generations, champion_dir)
        anchors = (clock("anchors", anchor_scores, loaded, spec, generations, home, judge.batch_size)
                   if judge.anchors else {})
        pairwise, outcomes = clock("pairwise", _pairwise, judging, judge, generations, champion_dir)
        noise = clock("noise", measure_noise, judging, spec, champion_dir, judge.noise_items)
        suite = (clock("regression suite", judge_suite, run.path, judging,
                       load_judge(Path(judge.judges_dir), config.regression.judge), config.regression.suite)
                 if config.regression.enabled else None)
        judge_params = loaded.params
        budget = loaded.budgets()
    finally:
        # Also when a part fails: a vLLM engine left running would make the retry's engine fail vLLM's start-up
        # check of free memory, in this same process.
        loaded.close()
    rows, cheap_rows = [], cheap_metrics(generations, rule, encoder)
    for gen, judged, cheap in zip(generations, pointwise, cheap_rows):
        rows.append({k: v for k, v in judged.items() if k not in ("key", "budget")} | {
            "judge": identity, "answer": gen["text"], "reference": gen["reference"], "metrics": cheap}
            | ({"dimensions": dimensions["items"].get(gen["id"], {})} if dimensions else {}))
    write_jsonl(run / files.JUDGMENTS, rows)
    if anchors:
        write_jsonl(run / files.ANCHORS, [{"id": i} | a for i, a in anchors.items()])
    if outcomes:
        write_jsonl(run / files.PAIRWISE, outcomes)
    student_params = json.loads((run / files.SFT_SUMMARY).read_text())["base_params"]
    health = judge_health(rows, pairwise, judge.health, judge_params=judge_params, student_params=student_params)
    scale = anchor_summary(anchors) if anchors else None
    if scale:
        degraded = anchor_degradation(scale, judge.health.min_anchor_span)
        health.degrade(degraded)
        health.warnings += [] if degraded else anchor_warnings(scale)
    scores = [r["score"] for r in rows if r["score"] is not None]
    metrics = {
        "judge": identity, "items": len(rows), "scored": len(scores),
        "judge_score_mean": round(statistics.fmean(scores), 4) if scores else None,
        "judge_score_stdev": round(statistics.pstdev(scores), 4) if len(scores) > 1 else None,
        "unparseable": sum(1 for r in rows if r.get("unparseable")),
        "truncated_prompts": sum(1 for r in rows if r.get("truncated")),
        "prompt_budget": budget,
        "cheap": aggregate(cheap_rows), "pairwise": pairwise, "noise": noise, "health": health.to_json(),
        "baseline": baseline, "regression": suite,
        "anchors": scale,
        "dimensions": dimensions["summary"] if dimensions else None,
        "normalised": _on_the_anchored_scale(run, rows, anchors, champion_dir, identity) if anchors else None,
        "cache_torn_lines": judging.cache.dropped_lines,
        "seconds": clock.seconds,
        "calibration": load_calibration(home, identity),
    }
    metrics["side_by_side"] = side_by_side(metrics, champion_dir)
    atomic_write_json(run / files.METRICS, metrics)
    return metrics


class Stopwatch:
    """Calls a function and keeps how long it took under a name (summed when a name repeats)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, work: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)


SIDE_METRICS = ("similarity", "token_f1", "rouge_l", "exact_match")


def side_by_side(metrics: dict[str, Any], champion_dir: str | None) -> dict[str, dict[str, float | None]]:
    """Base model, champion and this run on one scale each: judge score (raw and % of reference quality) and the
    cheap metrics. The champion's judge score counts only from the same judge, its metrics only on as many items."""
    scale = metrics.get("normalised") or {}

    def side(judge_mean, cheap, name) -> dict[str, float | None]:
        return {"judge": judge_mean, "normalised": scale.get(name), **{k: cheap.get(k) for k in SIDE_METRICS}}

    sides = {}
    if metrics.get("baseline"):
        sides["base"] = side(metrics["baseline"]["judge_score_mean"], metrics["baseline"]["cheap"], "base")
    theirs = Path(champion_dir) / files.METRICS if champion_dir else None
    if theirs and theirs.is_file():
        champion = json.loads(theirs.read_text())
        if champion.get("items") == metrics["items"]:
            same_judge = champion.get("judge") == metrics["judge"]
            sides["champion"] = side(champion.get("judge_score_mean") if same_judge else None,
                                     champion.get("cheap") or {}, "champion")
    sides["run"] = side(metrics["judge_score_mean"], metrics["cheap"], "run")
    return sides


def cheap_metrics(generations: list[dict[str, Any]], rule: FormatRule,
                  encoder: SentenceEncoder | None) -> list[dict[str, float]]:
    """Per answer: exact match, token F1, ROUGE-L, BLEU, JSON and format metrics, and semantic similarity."""
    rows = [item_metrics(g["text"], g["reference"], rule) for g in generations]
    if encoder is not None:
        similar = encoder.similarity([g["text"] for g in generations], [g["reference"] for g in generations])
        for row, value in zip(rows, similar):
            row["similarity"] = value
    return rows


def _encoder(judge: JudgeConfig, home: Path) -> SentenceEncoder | None:
    if not judge.similarity_encoder:
        return None
    return SentenceEncoder(resolve_encoder(judge.similarity_encoder, home))


def _dimensions(run: RunDir, judging: CachedJudge, judge: JudgeConfig, generations: list[dict[str, Any]],
                champion_dir: str | None) -> dict[str, Any] | None:
    """Per-item rubric scores of this run, and per-dimension means of this run, the base model and the champion."""
    if not judge.rubric:
        return None
    spec = load_judge(Path(judge.judges_dir), judge.rubric)
    identity = judging.loaded.identity(spec)
    per_item = {j["id"]: j.get("dimensions") or {}
                for j in judging.judge(spec, [judge_item(g) for g in generations])}
    summary: dict[str, Any] = {"judge": identity, "run": dimension_means(per_item.values())}
    if (run / files.BASELINE_GENERATIONS).is_file():
        base = judging.judge(spec, [judge_item(g) for g in read_jsonl(run / files.BASELINE_GENERATIONS)])
        summary["base"] = dimension_means(j.get("dimensions") or {} for j in base)
    theirs = Path(champion_dir) / files.METRICS if champion_dir else None
    if theirs and theirs.is_file():
        champion = json.loads(theirs.read_text()).get("dimensions") or {}
        if champion.get("judge") == identity:
            summary["champion"] = champion["run"]
    return {"items": per_item, "summary": summary}


def _on_the_anchored_scale(run: RunDir, rows: list[dict[str, Any]], anchors: dict[str, dict[str, float | None]],
                           champion_dir: str | None, identity: str) -> dict[str, float | None]:
    """This run's, the base model's and the champion's scores as a share of the way from empty to reference."""
    sets = {"run": {r["id"]: r["score"] for r in rows}}
    if (run / files.BASELINE_JUDGMENTS).is_file():
        sets["base"] = {b["id"]: b["score"] for b in read_jsonl(run / files.BASELINE_JUDGMENTS)}
    if champion_dir and (Path(champion_dir) / files.JUDGMENTS).is_file():
        sets["champion"] = {j["id"]: j["score"] for j in read_jsonl(Path(champion_dir) / files.JUDGMENTS)
                            if j.get("judge") == identity}
    return {name: normalised(scores, anchors) for name, scores in sets.items()}


def _format_rule(judge: JudgeConfig) -> FormatRule:
    schema = json.loads(Path(judge.json_schema).read_text()) if judge.json_schema else None
    return FormatRule(judge.format, regex=judge.format_regex, schema=schema)


def champion_answers(champion_dir: str | None, generations: list[dict[str, Any]]) -> dict[str, str]:
    """The champion's answers to the same test items, reused from its run directory, never regenerated.

    An answer counts when the champion saw the same rendered prompt (content and chat template) with the same
    decoding params, so the two answers differ only by the model that wrote them.
    """
    if not champion_dir or not (Path(champion_dir) / files.GENERATIONS).is_file():
        return {}
    mine = {g["id"]: (g["prompt"], g.get("params")) for g in generations}
    return {g["id"]: g["text"] for g in read_jsonl(Path(champion_dir) / files.GENERATIONS)
            if mine.get(g["id"]) == (g["prompt"], g.get("params"))}


def measure_noise(judging: CachedJudge, spec: JudgeSpec, champion_dir: str | None,
                  items: int) -> dict[str, Any] | None:
    """Re-judge some of the champion's answers and compare with the scores it got in its own run.

    The difference is the judge's run-to-run noise (batch composition, numerics, sampling); a challenger must
    beat the champion by more than this. None when there is no champion judged by the same judge.
    """
    if not champion_dir or items <= 0 or not (Path(champion_dir) / files.JUDGMENTS).is_file():
        return None
    identity = judging.loaded.identity(spec)
    earlier = [j for j in read_jsonl(Path(champion_dir) / files.JUDGMENTS)
               if j.get("judge") == identity and j.get("score") is not None]
    earlier = sorted(earlier, key=lambda j: j["id"])[:items]
    if not earlier:
        return None
    generations = {g["id"]: g for g in read_jsonl(Path(champion_dir) / files.GENERATIONS)}
    # Reversed order and batch size 1, uncached: a different batch composition than the champion's own run had.
    again = judging.loaded.scorer(spec).score([judge_item(generations[j["id"]]) for j in reversed(earlier)],
                                              batch_size=1)
    new = {j.id: j.score for j in again if j.score is not None}
    diffs = [new[j["id"]] - j["score"] for j in earlier if j["id"] in new]
    if not diffs:
        return None
    # The decision compares mean scores, so the floor is on the mean shift: |mean| + 2 standard errors.
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    floor = abs(statistics.fmean(diffs)) + 2 * spread / len(diffs) ** 0.5
    return {"items": len(diffs), "noise_floor": round(floor, 4), "mean_shift": round(statistics.fmean(diffs), 4),
            "max_abs_diff": round(max(abs(d) for d in diffs), 4)}


def _judge_baseline(run: RunDir, judging: CachedJudge, spec: JudgeSpec,
                    measure: Callable[[list[dict[str, Any]]], list[dict[str, float]]]) -> dict[str, Any] | None:
    """Judge the base model's answers (when the generate stage produced them): the row every run compares to."""
    path = run / files.BASELINE_GENERATIONS
    if not path.is_file():
        return None
    generations = read_jsonl(path)
    judged = judging.judge(spec, [judge_item(g) for g in generations])
    cheap = measure(generations)
    write_jsonl(run / files.BASELINE_JUDGMENTS, [{"id": g["id"], "score": j.get("score"), "metrics": m,
                                                  "answer": g["text"], "reference": g["reference"]}
                                                 for g, j, m in zip(generations, judged, cheap)])
    scores = [j["score"] for j in judged if j.get("score") is not None]
    return {"model": generations[0]["model"] if generations else None, "items": len(generations),
            "judge_score_mean": round(statistics.fmean(scores), 4) if scores else None,
            "cheap": aggregate(cheap)}


def _pairwise(judging: CachedJudge, judge: JudgeConfig, generations: list[dict[str, Any]],
              champion_dir: str | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Both answer orders for every item the champion also answered; None when there is no champion."""
    theirs = champion_answers(champion_dir, generations) if judge.pairwise else {}
    if not theirs:
        return None, []
    spec = load_judge(Path(judge.judges_dir), judge.pairwise_judge)
    shared = [g for g in generations if g["id"] in theirs]
    base = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"]} for g in shared]
    first = judging.judge(spec, [b | {"answer_a": g["text"], "answer_b": theirs[g["id"]]}
                                 for b, g in zip(base, shared)])
    second = judging.judge(spec, [b | {"answer_a": theirs[g["id"]], "answer_b": g["text"]}
                                  for b, g in zip(base, shared)])
    outcomes = [combine_orders(b["id"], a.get("choice"), c.get("choice"), a.get("distribution"),
                               c.get("distribution")) for b, a, c in zip(base, first, second)]
    summary = summarise(outcomes) | {"champion_run_dir": champion_dir}
    return summary, [outcome_json(o) for o in outcomes]
