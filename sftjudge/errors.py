"""Errors the user must fix, under one base class.

A `UserError` means the input or the setup has to change before anything can work: Prefect's retry policy fails
such a stage at once instead of retrying it (tasks/policy.py), and the CLI prints its message and exits with 2.
Every other exception is treated as possibly transient (out of memory, a lost worker, a full disk) and retried.
Messages name the file, the line or row, the field, and what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad config, data, judge definition or model: retrying the same work would fail the same way."""


class ConfigError(UserError, ValueError):
    """A config file, override or setting that cannot be used; the message names the file and the field."""


class DataError(UserError, ValueError):
    """Instruction data that cannot be used as a whole (or, with data.strict, one bad row); names file and row.

    `dropped` holds the rows curation had set aside (with their reasons) when it gave up, so the stage can still
    write them to the quarantine: the books balance also when curation fails.
    """

    def __init__(self, message: str, dropped: list | tuple = ()):
        super().__init__(message)
        self.dropped = list(dropped)


class JudgeError(UserError, ValueError):
    """A judge definition that cannot be used; names the file and field."""


class CalibrationError(UserError, ValueError):
    """A calibration file that cannot be used; names the file, line and field."""


class ModelError(UserError, RuntimeError):
    """A model that cannot be found, verified or loaded; the message says what to do."""


class TemplateError(UserError, RuntimeError):
    """The tokenizer has no chat template, or it differs from the one a checkpoint was trained with."""


class RunFileError(UserError, ValueError):
    """A run directory's own file (its manifest) that cannot be read; names the file and what to do."""


class RegistryError(UserError, KeyError):
    """A registry refusal: an unknown run, nothing to roll back to. (A KeyError for callers that look runs up.)"""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
