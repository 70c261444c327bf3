"""Curation primitives: the row step shape (kept + dropped with reasons), loading with validation, exact dedup.

Every step is a pure function over rows that returns the rows it kept and the rows it dropped, each with a
reason (datatrove's shape). `sftjudge.dataset.build_dataset` chains the steps and keeps the books: rows in =
rows kept + rows dropped, checked after every step, never assumed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.curate.rows import Example, RowError, example_from_obj
from sftjudge.curate.sources import SourceError, apply_field_map, read_records
from sftjudge.errors import DataError


@dataclass(frozen=True)
class Dropped:
    """A row removed by a step, with the step's reason. `row` is the Example, or the raw line for parse failures."""

    step: str
    reason: str
    source: str
    row: Any
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        row = self.row.to_json() if isinstance(self.row, Example) else self.row
        return {"step": self.step, "reason": self.reason, "detail": self.detail, "source": self.source, "row": row}


@dataclass
class StepResult:
    kept: list[Example]
    dropped: list[Dropped] = field(default_factory=list)


def load_rows(path: str | Path, *, fmt: str = "auto", strict: bool = False, field_map: dict[str, str] | None = None,
              split: str = "train") -> tuple[StepResult, int]:
    """Read every row of a JSONL/JSON/CSV/Parquet file or HF dataset into Examples.

    Rows that fail are dropped with their source (file:line or file:row), the field and the problem. Returns the
    step result and the number of blank lines skipped (they are not rows). Raises DataError for a source that
    cannot be read at all or, with strict=True, for the first invalid row.
    """
    kept: list[Example] = []
    dropped: list[Dropped] = []
    blank = 0
    try:
        for record in read_records(path, split=split):
            if record.obj is None and record.error is None and not record.raw.strip():
                blank += 1  # a `null` row has raw text and is quarantined below, not counted as blank
                continue
            error = record.error
            if error is None:
                try:
                    obj = apply_field_map(record.obj, field_map or {})
                    kept.append(example_from_obj(obj, row_id=_default_id(record.source), source=record.source,
                                                 fmt=fmt))
                    continue
                except RowError as exc:
                    error = (f"field {exc.field!r} {exc.problem.split(':')[0]}", str(exc))
            if strict:
                raise DataError(f"{record.source}: {error[0]}: {error[1]} (fix the row, or set data.strict=false "
                                f"to quarantine bad rows)")
            dropped.append(Dropped("load", error[0], record.source, record.raw, detail=error[1]))
    except SourceError as exc:
        raise DataError(str(exc)) from None
    return StepResult(kept, dropped), blank


def _default_id(source: str) -> str:
    """Row id when the data has none: the line or row number, which stays stable for an unchanged file."""
    where = source.rsplit(":", 1)[-1].replace(" ", "")
    return where if where.startswith(("line", "row")) else f"line{where}"


def normalized_text(example: Example) -> str:
    """Text used for exact-duplicate detection: NFKC, case-folded, whitespace collapsed.

    >>> from sftjudge.curate.rows import ChatMessage
    >>> a = Example(id="a", messages=(ChatMessage(role="user", content="Hi  There"),
    ...                               ChatMessage(role="assistant", content="ok")))
    >>> normalized_text(a)
    'user: hi there\\nassistant: ok'
    """
    parts = []
    for message in example.messages:
        text = " ".join(unicodedata.normalize("NFKC", message.content).casefold().split())
        parts.append(f"{message.role}: {text}")
    return "\n".join(parts)


def drop_exact_duplicates(rows: list[Example]) -> StepResult:
    """Keep the first occurrence of each normalised prompt+completion; later copies are dropped naming the first."""
    first_seen: dict[str, Example] = {}
    result = StepResult([])
    for row in rows:
        key = hashlib.sha256(normalized_text(row).encode()).hexdigest()
        if key in first_seen:
            original = first_seen[key]
            result.dropped.append(
                Dropped("exact_dedup", "exact duplicate", row.source, row,
                        detail=f"same normalised text as {original.id} ({original.source})")
            )
        else:
            first_seen[key] = row
            result.kept.append(row)
    return result


def drop_duplicate_ids(rows: list[Example]) -> StepResult:
    """Ids key generations and judgments, so a second row reusing an id is dropped, naming the first."""
    seen: dict[str, Example] = {}
    result = StepResult([])
    for row in rows:
        if row.id in seen:
            result.dropped.append(
                Dropped("unique_ids", "duplicate id", row.source, row,
                        detail=f"id {row.id!r} already used at {seen[row.id].source}")
            )
        else:
            seen[row.id] = row
            result.kept.append(row)
    return result


def strip_trailing_special_tokens(rows: list[Example], special_tokens: list[str]) -> tuple[list[Example], int]:
    r"""The rows with special tokens taken off the end of each assistant turn (`answer<|endoftext|>`: how many
    OpenAI- and T0-style exports end every completion), and how many rows were changed. Other turns are left as
    they are: a marker there is not an export's habit, and the drop step quarantines it.

    >>> from sftjudge.curate.rows import ChatMessage
    >>> row = Example(id="a", messages=(ChatMessage(role="user", content="hi"),
    ...                                 ChatMessage(role="assistant", content="ok <|endoftext|>\n")))
    >>> rows, changed = strip_trailing_special_tokens([row], ["<|endoftext|>"])
    >>> rows[0].completion, changed
    ('ok', 1)
    """
    tokens = sorted({t for t in special_tokens if t and t.strip()}, key=len, reverse=True)
    out, changed = [], 0
    for row in rows:
        messages = tuple(m.model_copy(update={"content": _without_trailing(m.content, tokens)})
                         if m.role == "assistant" else m for m in row.messages)
        if messages != row.messages:
            changed += 1
            row = row.model_copy(update={"messages": messages})
        out.append(row)
    return out, changed


def _without_trailing(text: str, tokens: list[str]) -> str:
    """`text` without the special tokens (and whitespace) at its end; unchanged, whitespace included, without any."""
    stripped = text.rstrip()
    while token := next((t for t in tokens if stripped.endswith(t)), None):
        stripped = stripped[:-len(token)].rstrip()
    return stripped if stripped != text.rstrip() else text


def drop_special_tokens(rows: list[Example], special_tokens: list[str]) -> StepResult:
    """Drop rows whose text holds one of the student's special tokens (`<|im_end|>`, `<|endoftext|>`, ...).

    Written in data they become real control tokens when the chat template is applied: an end of turn in the
    middle of an answer, or a fake turn injected into the conversation.

    >>> from sftjudge.curate.rows import ChatMessage
    >>> row = Example(id="a", messages=(ChatMessage(role="user", content="hi"),
    ...                                 ChatMessage(role="assistant", content="ok<|im_end|>more")))
    >>> drop_special_tokens([row], ["<|im_end|>", "<|im_start|>"]).dropped[0].reason
    'contains a special token'
    """
    tokens = sorted({t for t in special_tokens if t and t.strip()}, key=len, reverse=True)
    result = StepResult([])
    for row in rows:
        found = next(((t, m.role) for m in row.messages for t in tokens if t in m.content), None)
        if found:
            result.dropped.append(Dropped("special_tokens", "contains a special token", row.source, row,
                                          detail=f"{found[0]!r} in the {found[1]} text would become a control "
                                                 f"token of the chat template; remove or escape it"))
        else:
            result.kept.append(row)
    return result
