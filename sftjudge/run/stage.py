"""What every stage does around its own work, written once: skip when done, set threads, inject faults, record.

Each stage entry point takes the run directory and the whole `RunConfig`, and hands `run_stage` a function of one
`StageContext`; the stage picks from the config what it needs. A stage already marked completed returns its
recorded summary without redoing work, so a retried or re-run cycle resumes where it stopped. Nothing here
imports Prefect: tasks/ wraps the stage functions one to one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.config_checks import check_references
from sftjudge.config_yaml import dump_config
from sftjudge.models.embedded import sftjudge_home
from sftjudge.plan.check import check_memory
from sftjudge.run.directory import RunDir, StageRecord
from sftjudge.run.faults import maybe_fail
from sftjudge.runtime.memory import DevicePeak, device_free, stage_memory
from sftjudge.runtime.threads import apply_threads, resolve_threads


@dataclass(frozen=True, kw_only=True)
class StageContext:
    """What a stage's work gets: its run directory, the whole config, the resolved model cache and its record."""

    run: RunDir
    config: RunConfig
    home: Path  # the model cache ($SFTJUDGE_HOME, config.home, or ~/.cache/sftjudge), resolved once per stage
    record: StageRecord  # outputs and counts the stage reports to the manifest


def start_run(config: RunConfig, run_id: str | None = None) -> str:
    """Check what the config refers to (judges, files, a format regex), then create the run directory with the
    resolved config; return its path. Raises ConfigError before anything is created when a reference is bad."""
    check_references(config)
    run = RunDir.create(Path(config.runs_dir), dump_config(config), config.name, run_id=run_id)
    return str(run.path)


def run_stage(stage: str, run_path: str | Path, config: RunConfig,
              work: Callable[[StageContext], None]) -> dict[str, Any]:
    """Run `work` as stage `stage` of the run unless it already completed; return the stage's manifest entry.

    Sets the torch thread count (`config.threads`, else the worker's thread budget: runtime/threads.py), checks
    that a model stage fits the device's memory (plan/check.py), fails once first when fault injection names the stage
    (SFTJUDGE_INJECT_FAULT), and records start, end, status, outputs and counts in the manifest; an exception
    from `work` marks the stage failed and propagates.
    """
    run = RunDir(Path(run_path))
    if run.is_completed(stage):
        return run.stage_info(stage)
    apply_threads(resolve_threads(config.threads))
    home = sftjudge_home(config.home)
    with run.stage(stage) as record:
        maybe_fail(stage, run.path)
        planned = check_memory(stage, config, home)  # sft, generate, judge: refuse what will not fit, unloaded
        before = device_free() if planned is not None else None
        with DevicePeak() if before is not None else contextlib.nullcontext() as peak:
            work(StageContext(run=run, config=config, home=home, record=record))
        if planned is not None:
            record.memory = stage_memory(stage, planned.estimate.total, before, peak)
    return run.stage_info(stage)
