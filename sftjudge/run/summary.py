"""Human-sized summaries of a run, for the CLI and the flow's return value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_json_if_present


def run_summary(run_path: str | Path) -> dict[str, Any]:
    """Run id, status, stage statuses, losses at the chosen epoch, judge score and the decision with reasons."""
    run = RunDir(Path(run_path))
    manifest = run.manifest()
    stages = manifest["stages"]
    sft = stages["sft"].get("counts", {})
    judge = stages["judge"].get("counts", {})
    decision = manifest.get("decision") or {}
    return {
        "run_id": run.run_id,
        "run_dir": str(run.path),
        "status": "interrupted" if manifest["status"] == "running" and run.interrupted_stages() else manifest["status"],
        "stages": {name: info.get("status") for name, info in stages.items()},
        "best_epoch": sft.get("best_epoch"),
        "best_val_loss": sft.get("best_val_loss"),
        "train_loss_at_best": sft.get("train_loss_at_best"),
        "judge_score": judge.get("judge_score_mean"),
        "exact_match": judge.get("exact_match"),
        "regression_mean": judge.get("regression_mean"),
        "decision": decision.get("action"),
        "reasons": decision.get("reasons", []),
        "report": str(run / files.REPORT) if (run / files.REPORT).exists() else None,
        "review": read_json_if_present(run / files.REVIEW_AGREEMENT),
        "released": read_json_if_present(run / files.REVIEW_RELEASE),
        "tracking": manifest.get("tracking"),
        "errors": {name: info["error"] for name, info in stages.items() if info.get("status") == "failed"
                   and info.get("error")},
    }


def human_review_lines(review: dict[str, Any] | None, released: dict[str, Any] | None) -> list[str]:
    """Judge-human agreement (sftjudge review) and release status, as lines."""
    lines = [f"human review: {line}" for line in (review or {}).get("lines", [])] or [
        "human review: none yet, so the judge is not yet calibrated against a person on this test split "
        "(`sftjudge review RUN` grades a sample in the browser)"]
    if released:
        lines.append(f"released {released['released_at']}: the reviewer passed {released['evidence']['passed']} of "
                     f"{released['evidence']['labelled']} acceptance items")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"run {summary['run_id']}: {summary['status']}  ({summary['run_dir']})",
             "stages: " + ", ".join(f"{k}={v}" for k, v in summary["stages"].items())]
    if summary["best_val_loss"] is not None:
        lines.append(f"best epoch {summary['best_epoch']}: val loss {summary['best_val_loss']:.4f}, "
                     f"train loss {summary['train_loss_at_best']:.4f}")
    if summary["judge_score"] is not None:
        lines.append(f"judge score {summary['judge_score']:.2f}/10, exact match {summary['exact_match']}"
                     + (f", regression suite {summary['regression_mean']:.2f}/10"
                        if summary.get("regression_mean") is not None else ""))
    if summary["decision"]:
        lines.append(f"decision: {summary['decision'].upper()}")
        lines += [f"  - {reason}" for reason in summary["reasons"]]
    for stage, error in summary.get("errors", {}).items():
        lines.append(f"{stage} failed: {error}")
    if summary["status"] == "interrupted":
        lines.append(f"the process running it is gone (killed, or its worker lost): `sftjudge resume "
                     f"{summary['run_id']}` finishes the unfinished stages")
    if summary["judge_score"] is not None:
        lines += human_review_lines(summary.get("review"), summary.get("released"))
    tracking = summary.get("tracking") or {}
    if tracking.get("status") == "logged":
        lines.append(f"MLflow: run {tracking.get('mlflow_run_id')} at {tracking.get('uri')}"
                     + (f", champion version {tracking['registered_version']}"
                        if tracking.get("registered_version") else ""))
    elif tracking.get("status") == "failed":
        lines.append(f"MLflow: NOT logged ({tracking.get('error')}); the decision stands")
    if summary["report"]:
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
