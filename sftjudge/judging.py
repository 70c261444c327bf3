"""The judge stage's work: pointwise judging, pairwise against the champion, cheap metrics and judge health.

Judgments are appended to a per-run cache item by item, so a retried stage only judges what is missing.
"""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

from sftjudge.calibrate import load_calibration
from sftjudge.config import JudgeConfig, RegressionConfig
from sftjudge.health import HealthThresholds, judge_health
from sftjudge.judge import JudgeSpec, load_judge
from sftjudge.jsonl_cache import KeyedJsonl
from sftjudge.metrics import FormatRule, aggregate, item_metrics
from sftjudge.models import sftjudge_home
from sftjudge.pairwise import combine_orders, outcome_json, summarise
from sftjudge.rundir import RunDir, atomic_write_json, read_jsonl, write_jsonl


def judge_key(judge: JudgeConfig) -> str:
    return f"{judge.judge}@{judge.model}"


class JudgmentCache(KeyedJsonl):
    """Finished judgments keyed by a hash of (judge, item): a retried judge stage only judges what is missing."""

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


class LoadedJudge:
    """The judge model loaded once for the stage and used with any judge definition (score or choice)."""

    def __init__(self, judge: JudgeConfig, home: str | None, precision: str):
        import torch

        from sftjudge.device import device, use_bf16
        from sftjudge.models import resolve_model, sftjudge_home
        from sftjudge.sft import load_causal_lm

        self.config = judge
        self.path = resolve_model(judge.model, sftjudge_home(home))
        # Load straight into bf16 when it is fast here: a float32 copy of a 1.5B judge alone is 6.7 GB.
        dtype = "bfloat16" if use_bf16(precision) else "float32"
        self.model, self.tokenizer = load_causal_lm(self.path, dtype_name=dtype)
        self.model = self.model.to(device=device(), dtype=getattr(torch, dtype))
        self.params = sum(p.numel() for p in self.model.parameters())

    def scorer(self, spec: JudgeSpec):
        mode = spec.mode if self.config.mode == "auto" else self.config.mode
        if mode == "text":
            from sftjudge.generate import TransformersGenerator, VLLMGenerator
            from sftjudge.judge_text import TextJudge

            generator = (VLLMGenerator(self.path) if self.config.backend == "vllm"
                         else TransformersGenerator(self.model, self.tokenizer, batch_size=self.config.batch_size))
            return TextJudge(generator, self.tokenizer, spec)
        from sftjudge.judge import LogprobJudge

        return LogprobJudge(self.model, self.tokenizer, spec, max_prompt_tokens=self.config.max_prompt_tokens)

    def close(self) -> None:
        del self.model
        gc.collect()


def judge_cached(scorer, cache: JudgmentCache, items: list[dict[str, Any]], tag: str,
                 batch_size: int) -> list[dict[str, Any]]:
    """Judge every item not yet in the cache (in batches, each appended when done); return all, in order."""
    keys = [cache.key(tag, *(str(item[k]) for k in sorted(item))) for item in items]
    todo = [(key, item) for key, item in zip(keys, items) if key not in cache.records]
    for start in range(0, len(todo), batch_size * 4):
        chunk = todo[start:start + batch_size * 4]
        judged = scorer.score([item for _, item in chunk], batch_size=batch_size)
        cache.append([{"key": key} | j.to_json() for (key, _), j in zip(chunk, judged)])
    return [cache.records[key] for key in keys]


def _format_rule(judge: JudgeConfig) -> FormatRule:
    schema = json.loads(Path(judge.json_schema).read_text()) if judge.json_schema else None
    return FormatRule(judge.format, regex=judge.format_regex, schema=schema)


def champion_answers(champion_dir: str | None, generations: list[dict[str, Any]]) -> dict[str, str]:
    """The champion's answers to the same test items, reused from its run directory, never regenerated.

    An answer counts when the champion saw the same rendered prompt (content and chat template) with the same
    decoding params, so the two answers differ only by the model that wrote them.
    """
    if not champion_dir or not (Path(champion_dir) / "generations.jsonl").is_file():
        return {}
    mine = {g["id"]: (g["prompt"], g.get("params")) for g in generations}
    return {g["id"]: g["text"] for g in read_jsonl(Path(champion_dir) / "generations.jsonl")
            if mine.get(g["id"]) == (g["prompt"], g.get("params"))}


def run_judge_stage(run: RunDir, judge: JudgeConfig, home: str | None, precision: str,
                    champion_dir: str | None, student_params: int | None, noise_items: int = 0,
                    regression: RegressionConfig | None = None) -> dict[str, Any]:
    """Judge generations.jsonl pointwise (and pairwise vs the champion, and the regression suite's answers against
    the base model's); write judgments, metrics and health."""
    from sftjudge.regression import judge_suite

    generations = read_jsonl(run / "generations.jsonl")
    cache = JudgmentCache(run / "judgments.cache.jsonl").load()
    loaded = LoadedJudge(judge, home, precision)
    spec = load_judge(Path(judge.judges_dir), judge.judge)
    items = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"], "answer": g["text"]}
             for g in generations]
    # One scorer for every pointwise use: in text mode with vLLM, each scorer would start its own engine.
    scorer = loaded.scorer(spec)
    pointwise = judge_cached(scorer, cache, items, f"{judge_key(judge)}|{spec.mode}", judge.batch_size)
    baseline = _judge_baseline(run, scorer, cache, judge, spec)
    pairwise, outcomes = _pairwise(loaded, judge, cache, generations, champion_dir)
    noise = measure_noise(scorer, judge, champion_dir, noise_items)
    suite = (judge_suite(run.path, loaded, judge.judges_dir, judge.model, cache, regression.suite, regression.judge,
                         judge.batch_size) if regression and regression.enabled else None)
    judge_params = loaded.params
    loaded.close()
    rule = _format_rule(judge)
    rows, cheap_rows = [], []
    for gen, judged in zip(generations, pointwise):
        cheap = item_metrics(gen["text"], gen["reference"], rule)
        cheap_rows.append(cheap)
        rows.append({k: v for k, v in judged.items() if k != "key"} | {
            "judge": judge_key(judge), "answer": gen["text"], "reference": gen["reference"], "metrics": cheap})
    write_jsonl(run / "judgments.jsonl", rows)
    if outcomes:
        write_jsonl(run / "pairwise.jsonl", outcomes)
    health = judge_health(rows, pairwise, _thresholds(judge), judge_params=judge_params,
                          student_params=student_params)
    scores = [r["score"] for r in rows if r["score"] is not None]
    metrics = {
        "judge": judge_key(judge), "items": len(rows), "scored": len(scores),
        "judge_score_mean": round(statistics.fmean(scores), 4) if scores else None,
        "judge_score_stdev": round(statistics.pstdev(scores), 4) if len(scores) > 1 else None,
        "unparseable": sum(1 for r in rows if r.get("unparseable")),
        "truncated_prompts": sum(1 for r in rows if r.get("truncated")),
        "cheap": aggregate(cheap_rows), "pairwise": pairwise, "noise": noise, "health": health.to_json(),
        "baseline": baseline, "regression": suite,
        "cache_torn_lines": cache.dropped_lines,
        "calibration": load_calibration(sftjudge_home(home), judge_key(judge)),
    }
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def measure_noise(scorer, judge: JudgeConfig, champion_dir: str | None, items: int) -> dict[str, Any] | None:
    """Re-judge some of the champion's answers and compare with the scores it got in its own run.

    The difference is the judge's run-to-run noise (batch composition, numerics, sampling); a challenger must
    beat the champion by more than this. None when there is no comparable champion.
    """
    if not champion_dir or items <= 0 or not (Path(champion_dir) / "judgments.jsonl").is_file():
        return None
    earlier = [j for j in read_jsonl(Path(champion_dir) / "judgments.jsonl")
               if j.get("judge") == judge_key(judge) and j.get("score") is not None]
    earlier = sorted(earlier, key=lambda j: j["id"])[:items]
    if not earlier:
        return None
    generations = {g["id"]: g for g in read_jsonl(Path(champion_dir) / "generations.jsonl")}
    # Reversed order and batch size 1: a different batch composition than the champion's own run had.
    again = scorer.score([{"id": j["id"], "instruction": generations[j["id"]]["instruction"],
                           "reference": j["reference"], "answer": j["answer"]} for j in reversed(earlier)],
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


def _judge_baseline(run: RunDir, scorer, cache: JudgmentCache, judge: JudgeConfig,
                    spec: JudgeSpec) -> dict[str, Any] | None:
    """Judge the base model's answers (when the generate stage produced them): the row every run compares to."""
    path = run / "baseline_generations.jsonl"
    if not path.is_file():
        return None
    generations = read_jsonl(path)
    items = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"], "answer": g["text"]}
             for g in generations]
    judged = judge_cached(scorer, cache, items, f"{judge_key(judge)}|{spec.mode}", judge.batch_size)
    scores = [j["score"] for j in judged if j.get("score") is not None]
    return {"model": generations[0]["model"] if generations else None, "items": len(items),
            "judge_score_mean": round(statistics.fmean(scores), 4) if scores else None,
            "cheap": aggregate([item_metrics(g["text"], g["reference"], _format_rule(judge)) for g in generations])}


def _thresholds(judge: JudgeConfig) -> HealthThresholds:
    h = judge.health
    return HealthThresholds(max_unparseable_rate=h.max_unparseable_rate, min_label_mass=h.min_label_mass,
                            min_score_stdev=h.min_score_stdev, min_swap_consistency=h.min_swap_consistency,
                            block_smaller_judge=h.block_smaller_judge)


def _pairwise(loaded: LoadedJudge, judge: JudgeConfig, cache: JudgmentCache, generations: list[dict[str, Any]],
              champion_dir: str | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Both answer orders for every item the champion also answered; None when there is no champion."""
    theirs = champion_answers(champion_dir, generations) if judge.pairwise else {}
    if not theirs:
        return None, []
    spec = load_judge(Path(judge.judges_dir), judge.pairwise_judge)
    scorer = loaded.scorer(spec)
    shared = [g for g in generations if g["id"] in theirs]
    base = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"]} for g in shared]
    first = [b | {"answer_a": g["text"], "answer_b": theirs[g["id"]]} for b, g in zip(base, shared)]
    second = [b | {"answer_a": theirs[g["id"]], "answer_b": g["text"]} for b, g in zip(base, shared)]
    tag = f"{judge.pairwise_judge}@{judge.model}|{spec.mode}"
    got_first = judge_cached(scorer, cache, first, tag, judge.batch_size)
    got_second = judge_cached(scorer, cache, second, tag, judge.batch_size)
    outcomes = [combine_orders(b["id"], a.get("choice"), c.get("choice"))
                for b, a, c in zip(base, got_first, got_second)]
    summary = summarise(outcomes) | {"champion_run_dir": champion_dir}
    return summary, [outcome_json(o) for o in outcomes]
