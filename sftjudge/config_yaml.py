"""`RunConfig` to and from YAML: config files, dotted command-line overrides, the resolved config a run keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sftjudge.config import RunConfig
from sftjudge.errors import ConfigError

# Settings that moved to the section of the stage that reads them: an old config is told where they went.
MOVED_SETTINGS = {("decide", "noise_items"): "judge.noise_items"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a","b","c"], value), the value parsed as YAML (so 3 → int, true → bool).

    >>> parse_override("sft.epochs=3")
    (['sft', 'epochs'], 3)
    >>> parse_override("name=run a")
    (['name'], 'run a')
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        # YAML single quotes take backslashes literally (double quotes would read "\d" as an escape).
        raise ConfigError(f"override {text!r}: the value is read as YAML and is not valid YAML ({problem}); put it "
                          f"in single quotes inside the argument: \"{key.strip()}='{raw}'\"") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (intermediate dicts created as needed)."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file (or defaults when `path` is None) plus dotted overrides.

    Raises ConfigError naming the file and every invalid field before any work starts.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    for (section, key), new in MOVED_SETTINGS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"invalid config ({source}): {section}.{key} is now {new}; rename it there")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config ({source}): {problems}") from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, every field written out, so a run can be reproduced from its directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"sft": {"epochs": 2}} -> {"sft.epochs": 2}; lists stay values.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out
