"""Decide against the champion: the I/O around decide.py (reading the run, writing the registry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.decide import Decision, DecideRules, RunResult, decide
from sftjudge.registry import ChampionChanged, Registry
from sftjudge.rundir import RunDir, atomic_write_json, read_jsonl


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"sft": {"epochs": 2}} -> {"sft.epochs": 2}; lists stay values.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def run_result(run: RunDir) -> RunResult:
    """A run's numbers, read back from its run directory (challenger or champion alike)."""
    import yaml

    manifest = run.manifest()
    sft = manifest["stages"]["sft"]["counts"]
    curate = manifest["stages"]["curate"]["counts"]
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = read_jsonl(run / "metrics.jsonl")
    judgments = read_jsonl(run / "judgments.jsonl")
    data_report = json.loads((run / "data/report.json").read_text())
    flagged = data_report.get("contamination") or []
    settings = flatten(yaml.safe_load((run / "config.yaml").read_text()))
    action = settings.get("data.contamination.action")
    return RunResult(
        run_id=run.run_id, judge_score=metrics["judge_score_mean"], train_loss=sft["train_loss_at_best"],
        val_loss=sft["best_val_loss"], test_fingerprint=curate["test_fingerprint"], judge_key=metrics["judge"],
        judge_problems=tuple(metrics["health"]["problems"]),
        item_scores={j["id"]: j["score"] for j in judgments if j.get("score") is not None},
        train_losses=tuple(e["train_loss"] for e in epochs), val_losses=tuple(e["val_loss"] for e in epochs),
        unparseable_rate=metrics["unparseable"] / max(metrics["items"], 1),
        contaminated=len(flagged) if action == "report" else 0, train_rows=curate.get("train", 0),
        settings=settings, regression=metrics.get("regression"),
    )


def _result_from_registry(row: dict[str, Any]) -> RunResult:
    """When the champion's run directory is gone, the registry row still allows an unpaired comparison."""
    return RunResult(run_id=row["run_id"], judge_score=row["judge_score"], train_loss=row["train_loss_at_best"],
                     val_loss=row["best_val_loss"], test_fingerprint=row["test_fingerprint"], judge_key=row["judge"])


def champion_result(row: dict[str, Any] | None, run_id: str) -> RunResult | None:
    if not row or row["run_id"] == run_id:
        return None
    champion_dir = RunDir(Path(row["run_dir"]))
    if (champion_dir / "judgments.jsonl").is_file():
        return run_result(champion_dir)
    return _result_from_registry(row)


def decide_and_record(run: RunDir, config: RunConfig) -> Decision:
    """Decide promote/hold/rollback against the registry's champion; write decision.json; record both atomically.

    A run the registry already holds keeps the decision it was recorded with: after a crash that followed the
    commit, deciding again would compare the run with itself. When another run moves the champion between this
    decision and its record (two runs finishing at once), the decision is made again against the new champion.
    """
    registry = Registry.in_runs_dir(config.runs_dir)
    recorded = registry.get(run.run_id)
    if recorded and (run / "decision.json").is_file():
        earlier = json.loads((run / "decision.json").read_text())
        if earlier.get("action") == recorded["decision"]:
            return Decision(**earlier)
    for _ in range(20):
        champion_row = registry.champion()
        decision, challenger = _decide(run, config, champion_row)
        atomic_write_json(run / "decision.json", decision.to_json())
        try:
            registry.record(_registry_row(run, config, decision, challenger), promote=decision.action == "promote",
                            expected_champion=champion_row["run_id"] if champion_row else None)
            return decision
        except ChampionChanged:
            continue  # another run was promoted meanwhile: decide again, against it
    raise RuntimeError(f"run {run.run_id}: the champion kept changing while deciding; run decide again")


def _decide(run: RunDir, config: RunConfig, champion_row: dict[str, Any] | None) -> tuple[Decision, RunResult]:
    challenger = run_result(run)
    champion = champion_result(champion_row, run.run_id)
    metrics = json.loads((run / "metrics.json").read_text())
    measured_noise = (metrics.get("noise") or {}).get("noise_floor") or 0.0
    d = config.decide
    rules = DecideRules(min_improvement=d.min_improvement, max_val_train_ratio=d.max_val_train_ratio,
                        min_judge_score=d.min_judge_score,
                        max_unparseable_rate=config.judge.health.max_unparseable_rate,
                        max_contaminated=d.max_contaminated, noise_floor=max(measured_noise, d.min_noise_floor),
                        ci_level=d.ci_level, max_alignment_tax=d.max_alignment_tax,
                        min_regression_score=d.min_regression_score, min_overfit_gap=d.min_overfit_gap,
                        block_val_rise=d.block_val_rise, min_val_rise=d.min_val_rise)
    return decide(challenger, champion, rules), challenger


def _registry_row(run: RunDir, config: RunConfig, decision: Decision, challenger: RunResult) -> dict[str, Any]:
    manifest = run.manifest()
    sft = json.loads((run / "sft.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {
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
    }
