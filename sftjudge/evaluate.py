"""Decide against the champion: the I/O around decide.py (reading the run, writing the registry)."""

from __future__ import annotations

import json
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.decide import Decision, DecideRules, RunResult, decide
from sftjudge.registry import Registry
from sftjudge.rundir import RunDir, atomic_write_json


def run_result(run: RunDir) -> RunResult:
    """The challenger's numbers, read back from its run directory."""
    manifest = run.manifest()
    sft = manifest["stages"]["sft"]["counts"]
    metrics = json.loads((run / "metrics.json").read_text())
    return RunResult(run_id=run.run_id, judge_score=metrics["judge_score_mean"],
                     train_loss=sft["train_loss_at_best"], val_loss=sft["best_val_loss"],
                     test_fingerprint=manifest["stages"]["curate"]["counts"]["test_fingerprint"],
                     judge_key=metrics["judge"], judge_problems=tuple(metrics["health"]["problems"]))


def _result_from_registry(row: dict[str, Any]) -> RunResult:
    return RunResult(run_id=row["run_id"], judge_score=row["judge_score"], train_loss=row["train_loss_at_best"],
                     val_loss=row["best_val_loss"], test_fingerprint=row["test_fingerprint"], judge_key=row["judge"])


def decide_and_record(run: RunDir, config: RunConfig) -> Decision:
    """Decide promote/rollback against the registry's champion; write decision.json; record both atomically."""
    registry = Registry.in_runs_dir(config.runs_dir)
    challenger = run_result(run)
    champion_row = registry.champion()
    champion = _result_from_registry(champion_row) if champion_row and champion_row["run_id"] != run.run_id else None
    rules = DecideRules(min_improvement=config.decide.min_improvement,
                        max_val_train_ratio=config.decide.max_val_train_ratio,
                        min_judge_score=config.decide.min_judge_score)
    decision = decide(challenger, champion, rules)
    atomic_write_json(run / "decision.json", decision.to_json())
    manifest = run.manifest()
    sft = json.loads((run / "sft.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    registry.record({
        "run_id": run.run_id, "name": manifest["name"], "created_at": manifest["created_at"],
        "base_model": config.sft.base_model, "method": config.sft.method,
        "dataset_sha256": manifest["stages"]["curate"]["counts"]["input_sha256"],
        "test_fingerprint": challenger.test_fingerprint, "template_fingerprint": sft["template_fingerprint"],
        "epochs": config.sft.epochs, "learning_rate": config.sft.learning_rate, "batch_size": config.sft.batch_size,
        "best_epoch": sft["best_epoch"], "best_val_loss": challenger.val_loss,
        "train_loss_at_best": challenger.train_loss, "judge": challenger.judge_key,
        "judge_score": challenger.judge_score, "exact_match": metrics["cheap"].get("exact_match"),
        "decision": decision.action, "reasons": decision.reasons, "checkpoint": sft["best_checkpoint"],
        "run_dir": str(run.path.resolve()),
    }, promote=decision.action == "promote")
    return decision
