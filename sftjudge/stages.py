"""The five stages of a cycle, each reading its inputs from and writing its outputs to the run directory.

Each stage returns a small JSON-able summary and records itself in the manifest; a stage already marked
completed returns its recorded summary without redoing work, so a retried or re-run cycle resumes where it
stopped. Prefect tasks wrap these functions one to one (tasks/); nothing here imports Prefect.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sftjudge.config import DataConfig, GenerateConfig, JudgeConfig, RunConfig, SFTConfig, dump_config
from sftjudge.curate import curate, split_fingerprint
from sftjudge.device import set_threads
from sftjudge.rows import Example
from sftjudge.rundir import RunDir, atomic_write_json, read_jsonl, write_jsonl


def start_run(config: RunConfig, run_id: str | None = None) -> str:
    """Create the run directory with the resolved config; return its path."""
    run = RunDir.create(Path(config.runs_dir), dump_config(config), config.name, run_id=run_id)
    return str(run.path)


def _done(run: RunDir, stage: str) -> dict[str, Any] | None:
    return run.stage_info(stage) if run.is_completed(stage) else None


def load_split(run: RunDir, split: str) -> list[Example]:
    return [Example.model_validate(row) for row in read_jsonl(run / f"data/{split}.jsonl")]


def curate_stage(run_path: str, data: DataConfig) -> dict[str, Any]:
    """Load, validate, dedup and split the data into `data/`; invalid and dropped rows go to quarantine.jsonl."""
    run = RunDir(Path(run_path))
    if done := _done(run, "curate"):
        return done
    with run.stage("curate") as record:
        result = curate(Path(data.path), fmt=data.format, strict=data.strict, val_ratio=data.val_ratio,
                        test_ratio=data.test_ratio, seed=data.seed)
        for name, rows in (("train", result.splits.train), ("val", result.splits.val), ("test", result.splits.test)):
            write_jsonl(run / f"data/{name}.jsonl", [r.to_json() for r in rows])
        write_jsonl(run / "data/quarantine.jsonl", [d.to_json() for d in result.dropped])
        report = {
            "input": data.path, "input_sha256": result.input_sha256, "rows_in": result.rows_in,
            "blank_lines_skipped": result.blank_lines, "steps": result.steps,
            "splits": result.splits.sizes(), "dropped": len(result.dropped),
            "test_fingerprint": split_fingerprint(result.splits.test),
        }
        atomic_write_json(run / "data/report.json", report)
        record.outputs = {s: f"data/{s}.jsonl" for s in ("train", "val", "test", "quarantine")}
        record.outputs["report"] = "data/report.json"
        record.counts = {"rows_in": result.rows_in, "dropped": len(result.dropped), **result.splits.sizes(),
                         "input_sha256": result.input_sha256, "test_fingerprint": report["test_fingerprint"]}
    return run.stage_info("curate")


def sft_stage(run_path: str, sft: SFTConfig, home: str | None, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune the student on data/train.jsonl; per-epoch train and val loss to metrics.jsonl, checkpoints/."""
    from sftjudge.models import resolve_model, sftjudge_home
    from sftjudge.report import plot_losses
    from sftjudge.sft import EpochMetrics, TrainSettings, load_causal_lm, train

    run = RunDir(Path(run_path))
    if done := _done(run, "sft"):
        return done
    set_threads(threads)
    with run.stage("sft") as record:
        base = resolve_model(sft.base_model, sftjudge_home(home))
        model, tokenizer = load_causal_lm(base, trust_remote_code=sft.trust_remote_code)
        settings = TrainSettings(**{k: v for k, v in sft.model_dump().items()
                                    if k in TrainSettings.__dataclass_fields__} | {
            "target_modules": tuple(sft.target_modules)})
        metrics_path = run / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)

        def log_epoch(m: EpochMetrics) -> None:
            with metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(m)) + "\n")

        result = train(model, tokenizer, load_split(run, "train"), load_split(run, "val"), settings,
                       run / "checkpoints", on_epoch=log_epoch)
        summary = result.to_json() | {"base_model": sft.base_model, "base_model_path": base}
        atomic_write_json(run / "sft.json", summary)
        plot_losses(result.epochs, run / "loss_curve.png")
        best = next(m for m in result.epochs if m.epoch == result.best_epoch)
        record.outputs = {"metrics": "metrics.jsonl", "summary": "sft.json", "loss_curve": "loss_curve.png",
                          "best_checkpoint": str(Path(result.best_checkpoint).relative_to(run.path))}
        record.counts = {"epochs": len(result.epochs), "best_epoch": result.best_epoch,
                         "best_val_loss": round(best.val_loss, 4), "train_loss_at_best": round(best.train_loss, 4),
                         "trainable_params": result.trainable_params, "precision": result.precision}
        del model
        gc.collect()
    return run.stage_info("sft")


def generate_stage(run_path: str, gen: GenerateConfig, sft: SFTConfig, home: str | None,
                   threads: int | None = None) -> dict[str, Any]:
    """Answer every test prompt with the best checkpoint; one record per item in generations.jsonl."""
    from sftjudge.generate import GenerationParams, generate_answers, make_generator
    from sftjudge.models import resolve_model, sftjudge_home

    run = RunDir(Path(run_path))
    if done := _done(run, "generate"):
        return done
    set_threads(threads)
    with run.stage("generate") as record:
        summary = json.loads((run / "sft.json").read_text())
        checkpoint = Path(summary["best_checkpoint"])
        base = resolve_model(sft.base_model, sftjudge_home(home))
        params = GenerationParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, seed=gen.seed)
        generator, tokenizer = make_generator(gen.backend, base, checkpoint, batch_size=gen.batch_size,
                                              precision=sft.precision, trust_remote_code=sft.trust_remote_code)
        records = generate_answers(generator, tokenizer, load_split(run, "test"), params,
                                   model_label=f"{run.run_id}/epoch-{summary['best_epoch']}")
        write_jsonl(run / "generations.jsonl", records)
        record.outputs = {"generations": "generations.jsonl"}
        record.counts = {"items": len(records),
                         "hit_max_new_tokens": sum(r["finish_reason"] == "length" for r in records),
                         "completion_tokens": sum(r["completion_tokens"] for r in records)}
        if hasattr(generator, "close"):
            generator.close()
        del generator
        gc.collect()
    return run.stage_info("generate")


def judge_stage(run_path: str, judge: JudgeConfig, home: str | None, threads: int | None = None,
                precision: str = "auto") -> dict[str, Any]:
    """Score every generation against its reference with the local judge, plus cheap metrics."""
    from sftjudge.evaluate import judge_generations

    run = RunDir(Path(run_path))
    if done := _done(run, "judge"):
        return done
    set_threads(threads)
    with run.stage("judge") as record:
        metrics = judge_generations(run, judge, home, precision)
        record.outputs = {"judgments": "judgments.jsonl", "metrics": "metrics.json"}
        record.counts = {"items": metrics["items"], "judge_score_mean": metrics["judge_score_mean"],
                         "exact_match": metrics["cheap"].get("exact_match")}
    return run.stage_info("judge")


def decide_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Compare with the champion, record the run and (maybe) the new champion, and write report.md."""
    from sftjudge.evaluate import decide_and_record
    from sftjudge.report import write_report

    run = RunDir(Path(run_path))
    if done := _done(run, "decide"):
        return done
    with run.stage("decide") as record:
        decision = decide_and_record(run, config)
        write_report(run)
        record.outputs = {"decision": "decision.json", "report": "report.md"}
        record.counts = {"action": decision.action, "champion_before": decision.champion_before}
    run.update_manifest(decision=decision.to_json())
    return run.stage_info("decide")
