"""One Prefect task per cycle stage; each calls the library stage function and publishes its artifact."""

from __future__ import annotations

from typing import Any

from prefect import task

from sftjudge import stages
from sftjudge.config import DataConfig, GenerateConfig, JudgeConfig, RegressionConfig, RunConfig, SFTConfig
from tasks import artifacts
from tasks.policy import STAGE_TASK_OPTIONS


@task(name="start-run", persist_result=True)
def start_run(config: RunConfig) -> str:
    return stages.start_run(config)


@task(name="curate", **STAGE_TASK_OPTIONS)
def curate(run_path: str, data: DataConfig, sft_config: SFTConfig, judge_config: JudgeConfig,
           home: str | None) -> dict[str, Any]:
    info = stages.curate_stage(run_path, data, sft_config, judge_config, home)
    artifacts.data_report(run_path)
    return info


@task(name="sft", **STAGE_TASK_OPTIONS)
def sft(run_path: str, config: SFTConfig, home: str | None, threads: int | None) -> dict[str, Any]:
    info = stages.sft_stage(run_path, config, home, threads)
    artifacts.losses(run_path)
    return info


@task(name="generate", **STAGE_TASK_OPTIONS)
def generate(run_path: str, config: GenerateConfig, sft_config: SFTConfig, home: str | None,
             threads: int | None, regression: RegressionConfig) -> dict[str, Any]:
    return stages.generate_stage(run_path, config, sft_config, home, threads, regression)


@task(name="judge", **STAGE_TASK_OPTIONS)
def judge(run_path: str, config: JudgeConfig, home: str | None, threads: int | None, precision: str,
          runs_dir: str, noise_items: int, regression: RegressionConfig) -> dict[str, Any]:
    info = stages.judge_stage(run_path, config, home, threads, precision, runs_dir, noise_items, regression)
    artifacts.judge_summary(run_path)
    return info


@task(name="decide", **STAGE_TASK_OPTIONS)
def decide(run_path: str, config: RunConfig) -> dict[str, Any]:
    info = stages.decide_stage(run_path, config)
    artifacts.report(run_path)
    return info
