"""Checks of what a config refers to - judge definitions, files, a format regex - made before any stage runs.

A typo in a judge name or a missing schema file used to surface in the judge stage, after minutes of training;
`check_references` names every such problem at once, before the run directory is even created.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sftjudge.config import RunConfig
from sftjudge.errors import ConfigError, DataError, JudgeError


def check_references(config: RunConfig) -> None:
    """Raise ConfigError listing every judge, file or pattern the config names that cannot be used."""
    problems = _empty_fields(config) + _judges(config) + _format(config) + _files(config)
    if problems:
        raise ConfigError("the config refers to things that cannot be used: " + "; ".join(problems))


def _empty_fields(config: RunConfig) -> list[str]:
    fields = {"runs_dir": config.runs_dir, "data.path": config.data.path, "sft.base_model": config.sft.base_model,
              "judge.model": config.judge.model}
    return [f"{name} is empty" for name, value in fields.items() if not str(value).strip()]


def _judges(config: RunConfig) -> list[str]:
    from sftjudge.judge.spec import load_judge

    judge = config.judge
    names = {"judge.judge": judge.judge, "judge.pairwise_judge": judge.pairwise_judge if judge.pairwise else None,
             "judge.rubric": judge.rubric,
             "regression.judge": config.regression.judge if config.regression.enabled else None,
             "data.quality.judge": config.data.quality.judge if config.data.quality.enabled else None}
    problems = []
    for setting, name in names.items():
        if not name:
            continue
        try:
            spec = load_judge(Path(judge.judges_dir), name)
        except JudgeError as exc:
            problems.append(f"{setting}={name!r}: {exc}")
            continue
        if setting == "judge.rubric" and spec.kind != "rubric":
            problems.append(f"judge.rubric={name!r} is a {spec.kind} judge, not a rubric (kind: rubric)")
    return problems


def _format(config: RunConfig) -> list[str]:
    judge = config.judge
    if judge.format == "regex" and not judge.format_regex:
        return ["judge.format is 'regex' but judge.format_regex is not set"]
    if judge.format_regex:
        try:
            re.compile(judge.format_regex)
        except re.error as exc:
            return [f"judge.format_regex {judge.format_regex!r} is not a valid regular expression ({exc})"]
    return []


def _files(config: RunConfig) -> list[str]:
    from sftjudge.judge.suite import suite_path

    problems = []
    schema = config.judge.json_schema
    if schema:
        try:
            json.loads(Path(schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"judge.json_schema {schema!r} cannot be read as JSON ({exc})")
    if config.regression.enabled:
        try:
            suite_path(config.regression.suite)
        except DataError as exc:
            problems.append(str(exc))
    reference = config.data.contamination.regression_suite
    if reference and not Path(reference).is_file():
        problems.append(f"data.contamination.regression_suite {reference!r} does not exist")
    return problems
