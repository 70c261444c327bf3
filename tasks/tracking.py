"""Log the decided run to MLflow (sftjudge/track/): retried, and a final failure reported, never fatal.

The decision is already recorded when this runs; MLflow only mirrors it. So a tracking failure after its retries
is written to the manifest (`tracking.status: failed` with the error) and logged as a warning, and the cycle ends
with its decision intact.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from sftjudge.config import RunConfig
from sftjudge.run.directory import RunDir
from sftjudge.track.mlflow_run import track_run


@task(name="track")
def _track(run_path: str, config: RunConfig) -> dict:
    return track_run(run_path, config)


def track_decision(run_path: str, config: RunConfig) -> None:
    """One tracking attempt plus `tracking.retries`; the outcome goes to the run's manifest."""
    if not config.tracking.enabled:
        return
    attempt = _track.with_options(retries=config.tracking.retries,
                                  retry_delay_seconds=config.tracking.retry_delay_s)
    state = attempt(run_path, config, return_state=True)
    if state.is_completed():
        record = {"status": "logged"} | state.result()
    else:
        error = state.result(raise_on_failure=False)
        record = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:1000]}
        get_run_logger().warning(f"MLflow tracking failed after {config.tracking.retries + 1} attempts; the "
                                 f"decision stands: {record['error']}")
    RunDir(run_path).update_manifest(tracking=record)
