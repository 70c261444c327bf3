"""The base of every config section: strict (unknown keys, NaN and yes/no-for-a-number are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, model_validator


class _Strict(BaseModel):
    # An unknown key is almost always a typo; failing before any work beats silently ignoring it. An infinite or NaN
    # number is never a setting: sft.learning_rate=.inf passed gt=0, trained to NaN and was promoted.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `sft.epochs=true` as 1: a yes/no where a number belongs is a mistake, not a count.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and field.annotation in (int, float, int | None,
                                                                                          float | None):
                    raise ValueError(f"{name}: {value} is a yes/no, but {name} takes a number")
        return data


def masked_url(url: str) -> str:
    """`url` with the password of its user part replaced by ***, for messages.

    >>> masked_url("http://me:s3cret@host:5000/v1")
    'http://me:***@host:5000/v1'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def refuse_password(url: str | None, instead: str) -> str | None:
    """`url` unless it holds a password: a config is written to the run directory, MLflow and Prefect's database,
    so a secret in it would be stored wherever the run is. `instead`: where the secret goes."""
    if url and urlsplit(url).password is not None:
        raise ValueError(f"{masked_url(url)} holds a password, which would be stored with every run (config.yaml, "
                         f"MLflow, the Prefect database); take it out of the URL and {instead}")
    return url


SYSTEM_DIRS = ("/proc", "/sys", "/dev")  # the kernel's views: nothing of a run can live there


def refuse_system_dir(path: str, setting: str) -> str:
    """`path` unless it is the filesystem's root or under /proc, /sys or /dev (a runs directory holds every run,
    the registry and mlflow.db: a folder of its own)."""
    resolved = Path(path).expanduser().resolve()
    if resolved == Path(resolved.anchor) or any(resolved == Path(d) or Path(d) in resolved.parents
                                                for d in SYSTEM_DIRS):
        what = "the root of the filesystem" if resolved == Path(resolved.anchor) else "a system folder"
        raise ValueError(f"{setting} {path} is {what}; a runs directory holds every run, the registry and mlflow.db: give it a folder of its own "
                         f"(e.g. runs)")
    return path
