"""One Prefect task per cycle stage; each calls the library stage function and publishes its artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from sftjudge.tasks import artifacts, events
from sftjudge.tasks.policy import STAGE_TASK_OPTIONS

from sftjudge.config import RunConfig
from sftjudge.curate.stage import curate_stage
from sftjudge.decide.stage import decide_stage
from sftjudge.generate.stage import generate_stage
from sftjudge.judge.stage import judge_stage
from sftjudge.run.stage import start_run as start_run_dir
from sftjudge.train.stage import sft_stage


@task(name="start-run", persist_result=True)
def start_run(config: RunConfig) -> str:
    return start_run_dir(config)


@task(name="curate", **STAGE_TASK_OPTIONS)
def curate(run_path: str, config: RunConfig) -> dict[str, Any]:
    info = curate_stage(run_path, config)
    artifacts.data_report(run_path)
    return info


@task(name="sft", **STAGE_TASK_OPTIONS)
def sft(run_path: str, config: RunConfig) -> dict[str, Any]:
    info = sft_stage(run_path, config)
    artifacts.losses(run_path)
    return info


@task(name="generate", **STAGE_TASK_OPTIONS)
def generate(run_path: str, config: RunConfig) -> dict[str, Any]:
    return generate_stage(run_path, config)


@task(name="judge", **STAGE_TASK_OPTIONS)
def judge(run_path: str, config: RunConfig) -> dict[str, Any]:
    info = judge_stage(run_path, config)
    artifacts.judge_summary(run_path)
    return info


@task(name="decide", **STAGE_TASK_OPTIONS)
def decide(run_path: str, config: RunConfig) -> dict[str, Any]:
    info = decide_stage(run_path, config)
    artifacts.report(run_path)
    events.emit_decision(run_path)  # automations notify on promotion, rollback (deployments/setup.py)
    return info
