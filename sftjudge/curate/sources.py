"""Read instruction data from JSONL, JSON, CSV, Parquet or a Hugging Face dataset into raw records.

Every record carries where it came from (`file:line` for text formats, `file:row N` for tables) so that a bad
row can be named precisely. Decoding problems become records with an error instead of exceptions: the caller
quarantines them and the books still balance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """The data source as a whole cannot be read (missing, a directory that is not a dataset, bad format)."""


@dataclass(frozen=True)
class Record:
    source: str  # "path:line" or "path:row N"
    obj: Any = None  # the decoded row (dict for well-formed input)
    error: tuple[str, str] | None = None  # (reason, detail) when the row could not be decoded
    raw: str = ""  # the undecoded text, kept for the quarantine file


TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq"}
TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json"}


def is_hf_dataset_dir(path: Path) -> bool:
    """A directory written by `datasets.Dataset.save_to_disk` (single split or DatasetDict)."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (
        path / "state.json").is_file()


def read_records(path: str | Path, *, split: str = "train") -> Iterator[Record]:
    """Yield one Record per row of the file or dataset at `path`.

    Blank lines in JSONL are yielded as Records with obj=None and error=None so the caller can count them.
    Raises SourceError when the path does not exist, is an unsupported file type, or is an unreadable table.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if is_hf_dataset_dir(p):
            yield from _hf_records(p, split)
            return
        raise SourceError(f"{p}: is a directory but not a saved Hugging Face dataset; data.path must name a "
                          f"JSONL/JSON/CSV/Parquet file or a dataset saved with save_to_disk")
    if not p.exists():
        if "/" in str(path) and not str(path).startswith((".", "/", "~")) and p.suffix == "":
            yield from _hub_records(str(path), split)
            return
        raise SourceError(f"{p}: file does not exist (set data.path to your instruction data)")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(p)
    elif suffix == ".json":
        yield from _json_records(p)
    elif suffix in TABLE_SUFFIXES:
        yield from _table_records(p, suffix)
    else:
        raise SourceError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


# Non-UTF-8 lines needed (and more than half of all lines) before the whole file is called Latin-1; fewer are
# quarantined one by one like any other bad line.
_WHOLE_FILE_EVIDENCE = 5


def _looks_utf16(head: bytes) -> bool:
    """A UTF-16 byte-order mark or many NUL bytes, and text that decodes to JSON rows: a UTF-16 JSONL file.

    >>> _looks_utf16('{"prompt": "x"}'.encode("utf-16"))
    True
    >>> _looks_utf16(b"\\xff\\xfe\\x00\\n{}")  # a stray BOM-like line in a UTF-8 file: one bad row, not UTF-16
    False
    """
    if not (head.startswith((b"\xff\xfe", b"\xfe\xff")) or head.count(b"\x00") > len(head) // 4):
        return False
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        text = head.decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n")
        if text[:1] in ("{", "["):
            return True
    return False


def _jsonl_records(path: Path) -> Iterator[Record]:
    """One Record per line. A UTF-8 byte-order mark is skipped; a UTF-16 file, or one whose lines are mostly not
    UTF-8 (Latin-1, Windows-1252), is refused once at file level instead of quarantining every line."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if _looks_utf16(head):
        raise SourceError(f"{path}: this file is UTF-16 encoded; re-encode it as UTF-8 (for example `iconv -f UTF-16 "
                          f"-t UTF-8 {path.name} > {path.stem}.utf8.jsonl`)")
    undecodable = lines = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 BOM (Windows editors) is not part of the first row
            source = f"{path}:{line_no}"
            if not raw.strip():
                yield Record(source)
                continue
            lines += 1
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                yield Record(source, obj=json.loads(raw.decode("utf-8")), raw=text)
            except UnicodeDecodeError as exc:
                undecodable += 1
                yield Record(source, error=("not valid UTF-8", f"undecodable byte at offset {exc.start}"), raw=text)
            except json.JSONDecodeError as exc:
                yield Record(source, error=("invalid JSON", f"{exc.msg} at column {exc.colno}"), raw=text)
            except RecursionError:
                yield Record(source, error=("invalid JSON", "nested too deeply to read"), raw=text[:2000])
            except ValueError as exc:  # e.g. an integer beyond Python's digit limit
                yield Record(source, error=("invalid JSON", str(exc).split(";")[0]), raw=text[:2000])
    if undecodable >= _WHOLE_FILE_EVIDENCE and undecodable * 2 > lines:
        raise SourceError(f"{path}: {undecodable} of {lines} lines are not UTF-8; the file is probably Latin-1 or "
                          f"Windows-1252: re-encode it as UTF-8 (for example `iconv -f WINDOWS-1252 -t UTF-8 "
                          f"{path.name} > {path.stem}.utf8.jsonl`)")


def _json_records(path: Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a valid JSON document ({exc}); for one object per line use .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: a .json file must hold a list of rows (or {{\"data\": [...]}})")
    for i, obj in enumerate(data):
        yield Record(f"{path}:row {i}", obj=obj, raw=json.dumps(obj, ensure_ascii=False, default=str)[:10000])


def _table_records(path: Path, suffix: str) -> Iterator[Record]:
    import pandas as pd

    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            first_row = 0
        else:
            # Every cell as text: a CSV cannot say whether "1" was meant as a number, and rows are text anyway.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
            first_row = 2  # line 1 is the header
    except Exception as exc:  # noqa: BLE001 - pandas raises many types; all mean "cannot read this table"
        raise SourceError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    lines = _csv_record_lines(path, "\t" if suffix == ".tsv" else ",") if first_row else []
    if len(lines) != len(frame):  # the two readers disagree on the records: name rows, not lines we cannot vouch for
        lines = []
    for i, row in enumerate(frame.to_dict(orient="records")):
        label = f"{path}:line {lines[i]}" if lines else f"{path}:row {i}"
        obj = {k: _plain(v) for k, v in row.items()}
        yield Record(label, obj=obj, raw=json.dumps(obj, ensure_ascii=False, default=str)[:10000])


def _csv_record_lines(path: Path, sep: str) -> list[int]:
    """The line each data record of a CSV starts on (header and blank lines skipped, as pandas reads it).

    A quoted field may hold newlines, so a record can span several lines: counting records is not counting lines.
    """
    import csv

    starts, previous = [], 0
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=sep)
        for number, record in enumerate(reader):
            if number and record and any(cell.strip() for cell in record):
                starts.append(previous + 1)
            previous = reader.line_num
    return starts


def _plain(value: Any) -> Any:
    """Parquet cells arrive as numpy scalars/arrays; turn them into plain Python for validation."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN: a missing cell
        return None
    return value


def _hf_records(path: Path, split: str) -> Iterator[Record]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise SourceError(f"{path}: dataset has splits {sorted(dataset)}, not {split!r} (set data.split)")
        dataset = dataset[split]
    for i, row in enumerate(dataset):
        yield Record(f"{path}[{split}]:row {i}", obj=row, raw=json.dumps(row, ensure_ascii=False, default=str)[:10000])


def _hub_records(name: str, split: str) -> Iterator[Record]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing or private: all end the same way for the user
        raise SourceError(f"{name}: not a local file, and loading it as a hub dataset failed ({exc}). "
                          f"On a machine without a hub, point data.path at a local file.") from None
    for i, row in enumerate(dataset):
        yield Record(f"{name}[{split}]:row {i}", obj=row, raw=json.dumps(row, ensure_ascii=False, default=str)[:10000])


def apply_field_map(obj: Any, field_map: dict[str, str]) -> Any:
    """Rename the user's columns to ours: field_map maps our name → their name.

    >>> apply_field_map({"question": "q", "answer": "a"}, {"prompt": "question", "completion": "answer"})
    {'prompt': 'q', 'completion': 'a'}
    """
    if not field_map or not isinstance(obj, dict):
        return obj
    theirs_to_ours = {theirs: ours for ours, theirs in field_map.items()}
    return {theirs_to_ours.get(key, key): value for key, value in obj.items()}
