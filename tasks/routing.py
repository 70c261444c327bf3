"""Routing the GPU stages: a Prefect deployment on the GPU work pool, and a global GPU concurrency slot."""

from __future__ import annotations

import contextlib

from prefect import task
from prefect.deployments import run_deployment

from sftjudge.config import RunConfig


@task(name="gpu-stages-on-worker", retries=1, retry_delay_seconds=30)
def on_gpu_worker(deployment: str, run: str, config: RunConfig) -> None:
    """Run the gpu-stages flow on its deployment (a GPU worker) and wait; fail if it failed."""
    flow_run = run_deployment(deployment, parameters={"run": run, "config": config.model_dump(mode="json")},
                              timeout=None)
    if not flow_run.state or not flow_run.state.is_completed():
        raise RuntimeError(f"gpu-stages flow run {flow_run.id} ended {flow_run.state.name if flow_run.state else '?'}")


def gpu_slot(limit: str | None):
    """Hold one slot of the named global concurrency limit (no-op when none is configured)."""
    if not limit:
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(limit, occupy=1, strict=True)
