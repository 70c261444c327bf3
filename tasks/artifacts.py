"""Prefect artifacts that show a run's data report, losses, judge summary and decision in the UI."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sftjudge.decide.report import (
    data_report_markdown,
    judge_report_markdown,
    regression_report_markdown,
)
from sftjudge.run import files
from sftjudge.run.io import read_jsonl


def _key(run_path: str, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return f"{what}-{Path(run_path).name}".lower().replace("_", "-")


def data_report(run_path: str) -> None:
    report = json.loads((Path(run_path) / files.DATA_REPORT).read_text())
    create_markdown_artifact(key=_key(run_path, "data"), markdown="# Data report\n\n" + data_report_markdown(report),
                             description=f"Curation books: {report['splits']}")


def losses(run_path: str) -> None:
    rows = read_jsonl(Path(run_path) / files.EPOCH_METRICS)
    create_table_artifact(key=_key(run_path, "losses"), description="Per-epoch train and validation loss",
                          table=[{k: r[k] for k in ("epoch", "train_loss", "val_loss", "train_ppl", "val_ppl")}
                                 for r in rows])


def judge_summary(run_path: str) -> None:
    metrics = json.loads((Path(run_path) / files.METRICS).read_text())
    create_markdown_artifact(key=_key(run_path, "judge"), markdown="# Judge\n\n" + judge_report_markdown(metrics),
                             description=f"Judge {metrics['judge']}")
    if metrics.get("regression"):
        create_markdown_artifact(key=_key(run_path, "regression"),
                                 markdown="# Regression suite\n\n" + regression_report_markdown(metrics["regression"],
                                                                                                None),
                                 description="General-ability regression suite: alignment tax per category")


def report(run_path: str) -> None:
    create_markdown_artifact(key=_key(run_path, "report"), markdown=(Path(run_path) / files.REPORT).read_text(),
                             description="Run report with the decision and its reasons")
