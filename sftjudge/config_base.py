"""The base of every config section: strict (unknown keys, NaN and yes/no-for-a-number are errors)."""

from __future__ import annotations

from typing import Any

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
