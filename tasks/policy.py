"""Retry policy shared by the stage tasks: retry transient failures, never a user's own bad input."""

from __future__ import annotations

from sftjudge.chat import TemplateError
from sftjudge.config import ConfigError
from sftjudge.curate import DataError
from sftjudge.judge import JudgeError
from sftjudge.models import ModelError

# Retrying these only repeats the same error: the input or the setup must change first.
USER_ERRORS = (ConfigError, DataError, JudgeError, ModelError, TemplateError)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: False (fail now) when the task failed on bad config, data or models."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, USER_ERRORS)


STAGE_TASK_OPTIONS = dict(
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_user_error,
    persist_result=True,
)
