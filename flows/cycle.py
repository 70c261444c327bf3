"""The cycle: curate → sft → generate → judge → decide, one task per stage, all logic in the library."""

from __future__ import annotations

from typing import Any

from prefect import flow

from sftjudge.config import RunConfig
from sftjudge.summary import run_summary
from tasks import stages


@flow(name="fine-tune-then-judge", log_prints=True)
def fine_tune_then_judge(config: RunConfig = RunConfig()) -> dict[str, Any]:
    """Fine-tune the student on curated data, judge its test answers, and promote it or keep the champion."""
    run = stages.start_run(config)
    stages.curate(run, config.data, config.sft, config.judge, config.home)
    stages.sft(run, config.sft, config.home, config.threads)
    stages.generate(run, config.generate, config.sft, config.home, config.threads)
    stages.judge(run, config.judge, config.home, config.threads, config.sft.precision, config.runs_dir,
                 config.decide.noise_items)
    stages.decide(run, config)
    return run_summary(run)
