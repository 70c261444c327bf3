"""The cycle: curate → (sft → generate → judge on the GPU) → decide; one task per stage, all logic in the library."""

from __future__ import annotations

from typing import Any

from prefect import flow
from sftjudge.tasks import approval, stages, tracking
from sftjudge.tasks.routing import gpu_slot, on_gpu_worker

from sftjudge.config import RunConfig
from sftjudge.run.summary import run_summary


@flow(name="fine-tune-then-judge", log_prints=True)
def fine_tune_then_judge(config: RunConfig = RunConfig(), resume: str | None = None) -> dict[str, Any]:
    """Fine-tune the student on curated data, judge its test answers, and promote it or keep the champion.

    `resume`: an existing run directory to finish instead of starting a new run; its completed stages are skipped.
    """
    run = resume or stages.start_run(config)
    stages.curate(run, config)
    if config.orchestration.gpu_deployment:
        on_gpu_worker(config.orchestration.gpu_deployment, run, config)
    else:
        gpu_stages(run, config)
    approval.await_approval(run, config, stages.decide(run, config))
    tracking.track_decision(run, config)
    return run_summary(run)


@flow(name="gpu-stages", log_prints=True)
def gpu_stages(run: str, config: RunConfig) -> None:
    """The stages that want an accelerator; deployed on the `gpu` work pool, or run in-process on a CPU."""
    with gpu_slot(config.orchestration.gpu_concurrency_limit):
        stages.sft(run, config)
        stages.generate(run, config)
        stages.judge(run, config)
