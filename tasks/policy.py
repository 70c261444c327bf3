"""Retry policy shared by the stage tasks: retry transient failures, never a user's own bad input."""

from __future__ import annotations

from sftjudge.errors import UserError


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: False (fail now) when the task failed on something the user must fix.

    Retrying a `UserError` (bad config, data, judge definition, model or template) only repeats the same error,
    after reloading the models; anything else (out of memory, a lost worker, a full disk) may pass next time.
    """
    error = state.result(raise_on_failure=False)
    return not isinstance(error, UserError)


STAGE_TASK_OPTIONS = dict(
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_user_error,
    persist_result=True,
)
