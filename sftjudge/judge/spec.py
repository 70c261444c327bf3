"""Judges are data: `judges/<name>/judge.yaml` + prompt text, loaded into a `JudgeSpec`; and what a judge returns.

A judge's identity is its name, a digest of everything in the loaded definition that can change a score, and
the judge model's fingerprint: two runs are comparable, and a calibration applies, only under the same identity.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from sftjudge.errors import JudgeError


class Scale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = 1
    max: int = 10


class JudgeSpec(BaseModel):
    """A judge definition loaded from `judges/<name>/judge.yaml`, with its prompt texts read in."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    mode: Literal["logprob", "text"] = Field("logprob", description="read label probabilities, or parse JSON text")
    kind: Literal["score", "choice", "rubric"] = Field(
        "score", description="a 1-10 style score, a choice among labels, or one score per rubric criterion")
    scale: Scale = Field(default_factory=Scale)
    choices: dict[str, str] = Field(default_factory=dict, description="choice label -> meaning (kind: choice)")
    criteria: dict[str, str] = Field(
        default_factory=dict, description="dimension -> the words opening its line in the judge's turn (kind: rubric)")
    system_file: str | None = None
    prompt_file: str
    inputs: list[str] = Field(default_factory=lambda: ["instruction", "reference", "answer"],
                              description="item fields the prompt uses; each must appear as {field} in it")
    answer_prefix: str = Field("", description="text opening the judge's turn, right before the score token")
    system: str = ""
    prompt: str = ""

    @property
    def labels(self) -> list[str]:
        """The strings the judge may answer with: score values, or choice labels."""
        if self.kind == "choice":
            return list(self.choices)
        return [str(v) for v in range(self.scale.min, self.scale.max + 1)]

    def render_messages(self, item: dict[str, str]) -> list[dict[str, str]]:
        """The judge chat for one item; `item` must hold every field named in `inputs`."""
        user = self.prompt.format(**{name: item[name] for name in self.inputs})
        messages = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return messages + [{"role": "user", "content": user}]


def load_judge(judges_dir: Path, name: str) -> JudgeSpec:
    """Read judge.yaml and its prompt files; raise JudgeError naming the file on any problem."""
    folder = Path(judges_dir) / name
    settings = folder / "judge.yaml"
    if not settings.is_file():
        known = sorted(p.parent.name for p in Path(judges_dir).glob("*/judge.yaml"))
        raise JudgeError(f"{settings}: no such judge definition (judges in {judges_dir}: {known or 'none'})")
    try:
        data = yaml.safe_load(settings.read_text(encoding="utf-8")) or {}
        spec = JudgeSpec.model_validate(data)
    except (yaml.YAMLError, ValueError) as exc:
        raise JudgeError(f"{settings}: {exc}") from None
    spec.prompt = _judge_file(folder, settings, spec.prompt_file)
    if spec.system_file:
        spec.system = _judge_file(folder, settings, spec.system_file).strip()
    _check_placeholders(folder / spec.prompt_file, spec.prompt, spec.inputs)
    if spec.kind == "choice" and len(spec.choices) < 2:
        raise JudgeError(f"{settings}: a choice judge needs at least two entries under 'choices'")
    if spec.kind == "rubric" and (not spec.criteria or spec.mode != "logprob"):
        raise JudgeError(f"{settings}: a rubric judge needs 'criteria' (dimension: line opening) and mode logprob")
    return spec


def _judge_file(folder: Path, settings: Path, name: str) -> str:
    """A prompt or system file of the judge, which must lie inside the judge's own folder."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise JudgeError(f"{settings}: {name!r} points outside the judge folder {folder}; keep prompt files in it")
    if not path.is_file():
        raise JudgeError(f"{settings}: {name!r} does not exist in {folder}")
    return path.read_text(encoding="utf-8")


def _check_placeholders(path: Path, prompt: str, inputs: list[str]) -> None:
    """Every input appears as {input}; every {...} is an input (a literal brace is written {{ or }}).

    >>> _check_placeholders(Path("p.txt"), 'Rate {answer}. Reply {{"score": 7}}', ["answer"])
    >>> try:
    ...     _check_placeholders(Path("p.txt"), 'Rate {answer}. Reply {"score": 7}', ["answer"])
    ... except JudgeError as exc:
    ...     print(str(exc)[:58])
    p.txt: {"score"} is not one of the judge's inputs (answer)
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as exc:
        raise JudgeError(f"{path}: {exc} - write literal braces doubled, {{{{ and }}}}") from None
    for unknown in sorted(fields - set(inputs)):
        raise JudgeError(f"{path}: {{{unknown}}} is not one of the judge's inputs ({', '.join(inputs)}); write literal "
                         f"braces doubled, {{{{ and }}}} - e.g. {{{{\"score\": 7}}}}")
    for name in inputs:
        if name not in fields:
            raise JudgeError(f"{path}: prompt must contain {{{name}}}")


# Probabilities summed in float by a server or a model may reach a hair above 1; more than this means broken numbers.
MASS_SLACK = 1e-3


@dataclass
class Judgment:
    """One judged item. Score judges set `score`, choice judges set `choice`; `unparseable` (text mode only)
    holds why the reply could not be read, and then neither is set - a failure is never turned into a number."""

    id: str
    score: float | None = None  # expected score over the labels, renormalised
    choice: str | None = None  # most probable (logprob) or stated (text) choice label
    label_mass: float | None = None  # probability on any valid label (logprob mode): low = judge wanted to say else
    distribution: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    truncated: bool = False
    unparseable: str | None = None
    raw: str | None = None  # the judge's text (text mode)
    dimensions: dict[str, float] = field(default_factory=dict)  # rubric judges: one expected score per criterion

    def to_json(self) -> dict[str, Any]:
        record = {"id": self.id, "score": None if self.score is None else round(self.score, 4), "choice": self.choice,
                  "label_mass": None if self.label_mass is None else round(self.label_mass, 4),
                  "distribution": {k: round(v, 4) for k, v in self.distribution.items()},
                  "prompt_tokens": self.prompt_tokens, "truncated": self.truncated,
                  "unparseable": self.unparseable, "raw": self.raw}
        if self.dimensions:
            record["dimensions"] = {k: round(v, 4) for k, v in self.dimensions.items()}
        return record


def definition_digest(spec: JudgeSpec, mode: str) -> str:
    """SHA-256 (first 12 hex) of what decides a judge's scores besides its model: the prompt and system texts, the
    answer prefix, the scale or choices, the inputs and the mode the judge runs in.

    >>> spec = JudgeSpec(name="s", prompt_file="p", prompt="Rate {answer}")
    >>> definition_digest(spec, "logprob") == definition_digest(spec.model_copy(update={"description": "x"}), "logprob")
    True
    >>> definition_digest(spec, "logprob") == definition_digest(spec.model_copy(update={"prompt": "Grade {answer}"}),
    ...                                                         "logprob")
    False
    """
    fields = spec.model_dump(include={"kind", "scale", "choices", "criteria", "inputs", "answer_prefix", "system",
                                      "prompt"})
    blob = json.dumps(fields | {"mode": mode}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def judge_identity(spec: JudgeSpec, mode: str, model: str, model_fingerprint: str) -> str:
    """`name@model#definition-weights`: scores are comparable only between equal identities.

    >>> spec = JudgeSpec(name="reference-score", prompt_file="p", prompt="{answer}")
    >>> judge_identity(spec, "logprob", "qwen", "0123456789abcdef0123").startswith("reference-score@qwen#")
    True
    """
    return f"{spec.name}@{model}#{definition_digest(spec, mode)}-{model_fingerprint[:12]}"


def judge_item(generation: dict[str, Any]) -> dict[str, str]:
    """The fields a pointwise judge reads, from one generations.jsonl record."""
    return {"id": generation["id"], "instruction": generation["instruction"], "reference": generation["reference"],
            "answer": generation["text"]}
