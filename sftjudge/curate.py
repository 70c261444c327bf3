"""Curation: load and validate rows, drop exact duplicates, split train/val/test.

Every step is a pure function over rows that returns the rows it kept and the rows it dropped, each with a
reason (datatrove's shape). `curate` chains the steps and keeps the books: rows in = rows kept + rows dropped,
checked, never assumed.
"""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.rows import Example, RowError, example_from_obj


class DataError(ValueError):
    """Input data that cannot be used at all (missing file, strict-mode bad row); names file, line and field."""


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


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass
class CurationResult:
    """What curation produced: splits, every dropped row with its reason, and per-step books."""

    splits: Splits
    dropped: list[Dropped]
    steps: list[dict[str, Any]]
    rows_in: int
    blank_lines: int
    input_sha256: str


def load_jsonl_rows(path: Path, *, fmt: str = "auto", strict: bool = False) -> tuple[StepResult, int]:
    """Parse a JSONL file into Examples; lines that fail are dropped with file:line, field and problem.

    Returns the step result and the number of blank lines skipped (they are not rows).
    Raises DataError for a missing file, a directory, or (with strict=True) the first invalid row.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist (set data.path to your instruction data)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; data.path must name a JSONL file")
    kept: list[Example] = []
    dropped: list[Dropped] = []
    blank = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            source = f"{path}:{line_no}"
            if not raw.strip():
                blank += 1
                continue
            try:
                text = raw.decode("utf-8")
                obj = json.loads(text)
                kept.append(example_from_obj(obj, row_id=f"line{line_no}", source=source, fmt=fmt))
            except (UnicodeDecodeError, json.JSONDecodeError, RowError) as exc:
                reason, detail = _describe_row_error(exc)
                if strict:
                    raise DataError(f"{source}: {reason}: {detail} (fix the row, or set data.strict=false "
                                    f"to quarantine bad rows)") from None
                dropped.append(Dropped("load", reason, source, raw.decode("utf-8", errors="replace").rstrip("\n"),
                                       detail=detail))
    return StepResult(kept, dropped), blank


def _describe_row_error(exc: Exception) -> tuple[str, str]:
    """(reason, detail): the reason is a category fit for counting, the detail says where and what."""
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8", f"undecodable byte at offset {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        return "invalid JSON", f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RowError):
        return f"field {exc.field!r} {exc.problem.split(':')[0]}", str(exc)
    return type(exc).__name__, str(exc)


def normalized_text(example: Example) -> str:
    """Text used for exact-duplicate detection: NFKC, case-folded, whitespace collapsed.

    >>> from sftjudge.rows import ChatMessage
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


def split_rows(rows: list[Example], *, val_ratio: float, test_ratio: float, seed: int) -> Splits:
    """Seeded train/val/test split that depends only on the rows' content and the seed, not on file order.

    val and test each get at least one row when there are three or more rows.
    """
    ordered = sorted(rows, key=lambda r: hashlib.sha256(normalized_text(r).encode()).hexdigest())
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_test = max(1, round(n * test_ratio)) if n >= 3 else 0
    n_val = max(1, round(n * val_ratio)) if n >= 3 else 0
    test, val, train = ordered[:n_test], ordered[n_test:n_test + n_val], ordered[n_test + n_val:]
    return Splits(train=train, val=val, test=test)


Step = Callable[[list[Example]], StepResult]


def curate(path: Path, *, fmt: str, strict: bool, val_ratio: float, test_ratio: float, seed: int) -> CurationResult:
    """Run load → unique ids → exact dedup → split on one file, keeping per-step books.

    Raises DataError when the input is unusable or when no rows survive to train on.
    """
    loaded, blank = load_jsonl_rows(path, fmt=fmt, strict=strict)
    rows_in = len(loaded.kept) + len(loaded.dropped)
    books = [_book("load", rows_in, loaded)]
    dropped = list(loaded.dropped)
    rows = loaded.kept
    steps: list[tuple[str, Step]] = [("unique_ids", drop_duplicate_ids), ("exact_dedup", drop_exact_duplicates)]
    for name, step in steps:
        result = step(rows)
        books.append(_book(name, len(rows), result))
        dropped.extend(result.dropped)
        rows = result.kept
    if len(rows) < 3:
        raise DataError(f"{path}: only {len(rows)} usable rows after curation; need at least 3 to split "
                        f"(see quarantine for the {len(dropped)} dropped rows)")
    splits = split_rows(rows, val_ratio=val_ratio, test_ratio=test_ratio, seed=seed)
    kept_total = sum(splits.sizes().values())
    if kept_total + len(dropped) != rows_in:
        raise AssertionError(f"curation lost rows: in={rows_in} kept={kept_total} dropped={len(dropped)}")
    from sftjudge.rundir import file_sha256  # local: rundir is I/O, curate stays importable on its own

    return CurationResult(splits, dropped, books, rows_in, blank, file_sha256(Path(path)))


def _book(step: str, rows_in: int, result: StepResult) -> dict[str, Any]:
    if rows_in != len(result.kept) + len(result.dropped):
        raise AssertionError(f"step {step} lost rows: in={rows_in} kept={len(result.kept)} "
                             f"dropped={len(result.dropped)}")
    reasons = Counter(d.reason for d in result.dropped)
    return {"step": step, "in": rows_in, "kept": len(result.kept), "dropped": len(result.dropped),
            "reasons": dict(reasons.most_common())}


def split_fingerprint(rows: list[Example]) -> str:
    """Hash of a split's ids and content: two runs are comparable only when their test fingerprints match."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.id):
        digest.update(json.dumps(row.to_json()["messages"], sort_keys=True).encode())
        digest.update(row.id.encode())
    return digest.hexdigest()
