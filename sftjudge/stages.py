"""The five stages of a cycle, each reading its inputs from and writing its outputs to the run directory.

Each stage returns a small JSON-able summary and records itself in the manifest; a stage already marked
completed returns its recorded summary without redoing work, so a retried or re-run cycle resumes where it
stopped. Prefect tasks wrap these functions one to one (tasks/); nothing here imports Prefect.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from typing import Any

from sftjudge.config import (DataConfig, GenerateConfig, JudgeConfig, RegressionConfig, RunConfig, SFTConfig,
                              dump_config)
from sftjudge.device import set_threads
from sftjudge.faults import maybe_fail
from sftjudge.oom import with_smaller_batch_on_oom
from sftjudge.models import resolve_model, sftjudge_home
from sftjudge.rows import Example
from sftjudge.rundir import RunDir, atomic_directory, atomic_write_json, write_jsonl
from sftjudge.split import load_split


def start_run(config: RunConfig, run_id: str | None = None) -> str:
    """Create the run directory with the resolved config; return its path."""
    run = RunDir.create(Path(config.runs_dir), dump_config(config), config.name, run_id=run_id)
    return str(run.path)


def _done(run: RunDir, stage: str) -> dict[str, Any] | None:
    return run.stage_info(stage) if run.is_completed(stage) else None


def curate_stage(run_path: str, data: DataConfig, sft: SFTConfig, judge: JudgeConfig,
                 home: str | None) -> dict[str, Any]:
    """Curate and split the data into `data/`; every dropped row goes to data/quarantine.jsonl with its reason.

    Results are cached under $SFTJUDGE_HOME/curation/ by (input content, data settings, tokenizer), so an
    unchanged dataset is not processed again.
    """
    from sftjudge.dataset import curation_cache_key, source_sha256

    run = RunDir(Path(run_path))
    if done := _done(run, "curate"):
        return done
    with run.stage("curate") as record:
        maybe_fail("curate", run.path)
        quality_id = f"{data.quality.judge}@{judge.model}" if data.quality.enabled else None
        key = curation_cache_key(data, source_sha256(data.path), sft.base_model, sft.max_seq_len, quality_id)
        cache_dir = sftjudge_home(home) / "curation" / key
        if data.cache and (cache_dir / "report.json").is_file():
            shutil.copytree(cache_dir, run / "data", dirs_exist_ok=True)
            report = json.loads((run / "data/report.json").read_text())
            report["cache"] = {"key": key, "hit": True}
        else:
            report = _curate_into(run / "data", data, sft, judge, home)
            report["cache"] = {"key": key, "hit": False}
            if data.cache:
                with atomic_directory(cache_dir) as tmp:
                    shutil.copytree(run / "data", tmp, dirs_exist_ok=True)
        atomic_write_json(run / "data/report.json", report)
        record.outputs = {s: f"data/{s}.jsonl" for s in ("train", "val", "test", "quarantine")}
        record.outputs["report"] = "data/report.json"
        record.counts = {"rows_in": report["rows_in"], "dropped": report["rows_dropped"], **report["splits"],
                         "input_sha256": report["input_sha256"], "test_fingerprint": report["test_fingerprint"],
                         "cache_hit": report["cache"]["hit"]}
    return run.stage_info("curate")


def _curate_into(out: Path, data: DataConfig, sft: SFTConfig, judge: JudgeConfig, home: str | None) -> dict:
    from transformers import AutoTokenizer

    from sftjudge.dataset import build_dataset

    base = resolve_model(sft.base_model, sftjudge_home(home))
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=sft.trust_remote_code)
    scorer = _quality_scorer(data, judge, home) if data.quality.enabled else None
    suite = None
    if data.contamination.regression_suite:
        from sftjudge.curate import load_rows

        suite = load_rows(data.contamination.regression_suite)[0].kept
    result = build_dataset(data, tokenizer=tokenizer, max_seq_len=sft.max_seq_len, quality_scorer=scorer,
                           regression_rows=suite)
    for name, rows in (("train", result.splits.train), ("val", result.splits.val), ("test", result.splits.test)):
        write_jsonl(out / f"{name}.jsonl", [r.to_json() for r in rows])
    write_jsonl(out / "quarantine.jsonl", [d.to_json() for d in result.dropped])
    return result.report


def _quality_scorer(data: DataConfig, judge: JudgeConfig, home: str | None):
    """The judge model scoring training rows with the quality judge definition."""
    from sftjudge.judge import load_judge
    from sftjudge.judging import LoadedJudge

    scorer = LoadedJudge(judge, home, "auto").scorer(load_judge(Path(judge.judges_dir), data.quality.judge))

    def score(rows: list[Example]) -> list[float | None]:
        items = [{"id": r.id, "instruction": r.instruction, "answer": r.completion} for r in rows]
        return [j.score for j in scorer.score(items, batch_size=judge.batch_size)]

    return score


def sft_stage(run_path: str, sft: SFTConfig, home: str | None, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune the student on data/train.jsonl; per-epoch train and val loss to metrics.jsonl, checkpoints/.

    With sft.num_processes > 1 the training runs as that many data-parallel processes under `accelerate launch`
    (one per GPU), and the stage records what they wrote to the run directory.
    """
    from sftjudge.distributed import launched
    from sftjudge.training import fine_tune, fine_tune_launched

    run = RunDir(Path(run_path))
    if done := _done(run, "sft"):
        return done
    set_threads(threads)
    with run.stage("sft") as record:
        maybe_fail("sft", run.path)
        base = resolve_model(sft.base_model, sftjudge_home(home))  # an embedded model is assembled here, once
        if sft.num_processes > 1 and not launched():
            summary = fine_tune_launched(run, sft, home, threads)
        else:
            summary = fine_tune(run, sft, base)[1]
        best = next(m for m in summary["epochs"] if m["epoch"] == summary["best_epoch"])
        record.outputs = {"metrics": "metrics.jsonl", "summary": "sft.json", "loss_curve": "loss_curve.png",
                          "best_checkpoint": str(Path(summary["best_checkpoint"]).relative_to(run.path))}
        record.counts = {"epochs": len(summary["epochs"]), "best_epoch": summary["best_epoch"],
                         "stopped_early": summary["stopped_early"], "resumed_from_epoch": summary["resumed_from_epoch"],
                         "best_val_loss": round(best["val_loss"], 4),
                         "train_loss_at_best": round(best["train_loss"], 4),
                         "trainable_params": summary["trainable_params"], "precision": summary["precision"],
                         "batch_size": summary["batch_size"], "num_processes": summary["num_processes"],
                         "test_ppl": summary["test_ppl"]}
    return run.stage_info("sft")


def generate_stage(run_path: str, gen: GenerateConfig, sft: SFTConfig, home: str | None,
                   threads: int | None = None, regression: RegressionConfig | None = None) -> dict[str, Any]:
    """Answer every test prompt with the best checkpoint; one record per item in generations.jsonl. With the
    regression suite enabled, also its prompts (regression_generations.jsonl) and, cached across runs, the base
    model's answers to them (regression_baseline.jsonl).

    Answers are appended as each batch finishes, keyed by (model fingerprint, prompt, params), so a retried
    stage generates only what is missing and loads no model when nothing is; the file ends in test-split order.
    """
    from sftjudge.generate import (LazyGenerator, checkpoint_tokenizer, engine_id, generation_params,
                                   make_generator, prompts_for)
    from sftjudge.generate_cache import generate_cached, model_fingerprint

    run = RunDir(Path(run_path))
    if done := _done(run, "generate"):
        return done
    set_threads(threads)
    with run.stage("generate") as record:
        maybe_fail("generate", run.path)
        summary = json.loads((run / "sft.json").read_text())
        checkpoint = Path(summary["best_checkpoint"])
        base = resolve_model(sft.base_model, sftjudge_home(home))
        rows = load_split(run.path, "test")
        tokenizer = checkpoint_tokenizer(checkpoint)
        prompts = prompts_for(tokenizer, rows)  # refuses a template mismatch up front
        fingerprint = model_fingerprint(base, checkpoint, engine=engine_id(gen.backend, sft.precision))
        generator = LazyGenerator(lambda: make_generator(
            gen.backend, base, checkpoint, batch_size=gen.batch_size, precision=sft.precision,
            trust_remote_code=sft.trust_remote_code, tensor_parallel_size=gen.tensor_parallel_size,
            gpu_memory_utilization=gen.gpu_memory_utilization)[0])
        # vLLM batches continuously inside one call, so it gets bigger chunks; transformers gets one batch each.
        chunk = gen.batch_size if gen.backend == "transformers" else max(gen.batch_size, 256)
        try:
            label = f"{run.run_id}/epoch-{summary['best_epoch']}"
            result = generate_cached(rows, prompts, generation_params(gen), run / "generations.jsonl",
                                     fingerprint, label, generator, chunk_size=chunk)
            if regression and regression.enabled:
                suite = _generate_suite(run, regression, gen, tokenizer, fingerprint, label, generator, chunk)
        finally:
            generator.close()  # frees the GPU for the judge, also when generation failed
            gc.collect()
        records = result.records
        record.outputs = {"generations": "generations.jsonl"}
        base_jobs = []  # (rows, params, file): the base model's answers this run wants
        if gen.baseline:
            base_jobs.append((rows, generation_params(gen), "baseline_generations.jsonl"))
            record.outputs["baseline"] = "baseline_generations.jsonl"
        if regression and regression.enabled:
            base_jobs.append((suite, _suite_params(regression, gen), "regression_baseline.jsonl"))
            record.outputs |= {"regression": "regression_generations.jsonl",
                               "regression_baseline": "regression_baseline.jsonl"}
        _base_model_answers(run, base_jobs, gen, sft, base, home)
        record.counts = {"items": len(records), **result.counts(), "model_fingerprint": fingerprint,
                         "hit_max_new_tokens": sum(r["finish_reason"] == "length" for r in records),
                         "completion_tokens": sum(r["completion_tokens"] for r in records)}
    return run.stage_info("generate")


def _suite_params(regression: RegressionConfig, gen: GenerateConfig):
    from sftjudge.generate import GenerationParams

    # The task's stop strings belong to the task's format, not to general prompts.
    return GenerationParams(max_new_tokens=regression.max_new_tokens, temperature=gen.temperature, seed=gen.seed)


def _generate_suite(run: RunDir, regression: RegressionConfig, gen: GenerateConfig, tokenizer, fingerprint: str,
                    label: str, generator, chunk: int) -> list[Example]:
    """The fine-tuned model's answers to the regression suite, with the generator already loaded for the test."""
    from sftjudge.generate import prompts_for
    from sftjudge.generate_cache import generate_cached
    from sftjudge.regression import load_suite

    suite = load_suite(regression.suite)
    generate_cached(suite, prompts_for(tokenizer, suite), _suite_params(regression, gen),
                    run / "regression_generations.jsonl", fingerprint, label, generator, chunk_size=chunk)
    return suite


def _base_model_answers(run: RunDir, jobs: list[tuple[list[Example], Any, str]], gen: GenerateConfig,
                        sft: SFTConfig, base: str, home: str | None) -> None:
    """The base model's answers for each (rows, params, file) job, from the baseline cache shared by every run.

    One tokenizer and one lazily loaded generator serve all jobs: the base model (a vLLM engine on a GPU worker)
    starts at most once per stage, and not at all when every answer is cached.
    """
    if not jobs:
        return
    from transformers import AutoTokenizer

    from sftjudge.generate import LazyGenerator, make_generator
    from sftjudge.generate_cache import generate_baseline

    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=sft.trust_remote_code)
    generator = LazyGenerator(lambda: make_generator(gen.backend, base, None, batch_size=gen.batch_size,
                                                     precision=sft.precision,
                                                     trust_remote_code=sft.trust_remote_code)[0])
    try:
        for rows, params, name in jobs:
            baseline = generate_baseline(base, rows, params, sftjudge_home(home), backend=gen.backend,
                                         batch_size=gen.batch_size, precision=sft.precision,
                                         trust_remote_code=sft.trust_remote_code, tokenizer=tokenizer,
                                         generator=generator)
            write_jsonl(run / name, baseline.records)
    finally:
        generator.close()


def judge_stage(run_path: str, judge: JudgeConfig, home: str | None, threads: int | None = None,
                precision: str = "auto", runs_dir: str | None = None, noise_items: int = 0,
                regression: RegressionConfig | None = None) -> dict[str, Any]:
    """Score every generation against its reference with the local judge (and pairwise against the champion's
    answers when there is a champion), plus cheap metrics and the judge's health."""
    from sftjudge.judging import run_judge_stage
    from sftjudge.registry import Registry

    run = RunDir(Path(run_path))
    if done := _done(run, "judge"):
        return done
    set_threads(threads)
    with run.stage("judge") as record:
        maybe_fail("judge", run.path)
        champion = Registry.in_runs_dir(runs_dir).champion() if runs_dir else None
        champion_dir = champion["run_dir"] if champion and champion["run_id"] != run.run_id else None
        student_params = json.loads((run / "sft.json").read_text())["base_params"]
        metrics = with_smaller_batch_on_oom(
            lambda size: run_judge_stage(run, judge.model_copy(update={"batch_size": size}), home, precision,
                                         champion_dir, student_params, noise_items, regression), judge.batch_size)
        record.outputs = {"judgments": "judgments.jsonl", "metrics": "metrics.json"}
        if metrics["pairwise"]:
            record.outputs["pairwise"] = "pairwise.jsonl"
        record.counts = {"items": metrics["items"], "judge_score_mean": metrics["judge_score_mean"],
                         "exact_match": metrics["cheap"].get("exact_match"),
                         "judge_valid": metrics["health"]["valid"],
                         "win_rate_vs_champion": (metrics["pairwise"] or {}).get("win_rate"),
                         "regression_mean": (metrics["regression"] or {}).get("run_mean")}
    return run.stage_info("judge")


def decide_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Compare with the champion, record the run and (maybe) the new champion, then write report.md.

    The report is rebuilt from the run directory after the stage is recorded, so it shows the finished run and a
    failure while writing it is retried without deciding twice.
    """
    from sftjudge.evaluate import decide_and_record
    from sftjudge.report import write_report

    run = RunDir(Path(run_path))
    if not run.is_completed("decide"):
        with run.stage("decide") as record:
            maybe_fail("decide", run.path)
            decision = decide_and_record(run, config)
            run.update_manifest(decision=decision.to_json())
            record.outputs = {"decision": "decision.json", "report": "report.md"}
            record.counts = {"action": decision.action, "champion_before": decision.champion_before}
    write_report(run)
    return run.stage_info("decide")
