"""A person's labels for the review sample: given one at a time in the browser, or imported from a file.

Each label: pass/fail, a 1-5 grade, the blind choice between this run's and the champion's answer (stored as
run / champion / tie; the page only ever says first / second), and a note. The whole label file is rewritten
atomically on every label, so a closed tab or a killed server loses nothing. Export writes the sample with empty
label columns (JSONL or CSV) for teams that label elsewhere; import refuses - naming file, line and field - unknown
or duplicate ids, grades out of range, and items whose content changed since the export.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftjudge.errors import DataError
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_text, exclusive, numbered_json_lines, read_jsonl

LABEL_FIELDS = ("passed", "grade", "choice", "note")
EXPORT_FIELDS = ("id", "content_sha256", "instruction", "reference", "answer", "first_answer", "second_answer",
                 *LABEL_FIELDS)
CHOICES = ("first", "second", "tie")
MAX_NOTE = 10_000  # characters: a reviewer's note, not a document
# A spreadsheet runs a cell that starts with one of these as a formula; exported cells get a leading apostrophe
# (shown, not kept, by spreadsheets) and import takes it off again.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def shown_pair(item: dict[str, Any]) -> tuple[str, str] | None:
    """(first, second) answers as the page shows them, or None without a champion answer."""
    if "champion_answer" not in item:
        return None
    return ((item["answer"], item["champion_answer"]) if item["run_first"]
            else (item["champion_answer"], item["answer"]))


def choice_to_side(item: dict[str, Any], choice: str | None) -> str | None:
    """"first" / "second" / "tie" as the person saw them, to "run" / "champion" / "tie".

    >>> choice_to_side({"run_first": False, "champion_answer": "x"}, "first")
    'champion'
    """
    if choice in (None, "", "tie"):
        return choice or None
    return "run" if (choice == "first") == bool(item.get("run_first")) else "champion"


def side_to_choice(item: dict[str, Any], side: str | None) -> str | None:
    if side in (None, "tie"):
        return side
    return "first" if (side == "run") == bool(item.get("run_first")) else "second"


def check_label(item: dict[str, Any], raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A validated label for `item` from raw fields (strings from a CSV or JSON values); DataError names `where`
    and the field."""
    label: dict[str, Any] = {"id": item["id"]}
    passed = raw.get("passed")
    if isinstance(passed, str):
        passed = {"pass": True, "true": True, "1": True, "yes": True, "fail": False, "false": False, "0": False,
                  "no": False, "": None}.get(passed.strip().lower(), passed)
    if passed is not None and not isinstance(passed, bool):
        raise DataError(f"{where}: field 'passed' is {raw.get('passed')!r}; use pass/fail (true/false) or leave it "
                        f"empty")
    label["passed"] = passed
    grade = raw.get("grade")
    if isinstance(grade, str):
        grade = grade.strip() or None
    if grade is not None:
        try:
            if isinstance(grade, bool) or float(grade) != int(float(grade)):
                raise ValueError
            grade = int(float(grade))
        except (ValueError, TypeError, OverflowError):  # "x", a list, inf (1e999 in JSON)
            raise DataError(f"{where}: field 'grade' is {raw.get('grade')!r}; a whole number from 1 to 5") from None
        if not 1 <= grade <= 5:
            raise DataError(f"{where}: field 'grade' is {grade}, outside 1-5")
    label["grade"] = grade
    choice = raw.get("choice")
    if choice is not None and not isinstance(choice, str):
        raise DataError(f"{where}: field 'choice' is {choice!r}; one of {', '.join(CHOICES)} (text)")
    choice = (choice or "").strip().lower() or None
    if choice is not None and choice not in CHOICES:
        raise DataError(f"{where}: field 'choice' is {raw.get('choice')!r}; one of {', '.join(CHOICES)}")
    if choice is not None and "champion_answer" not in item:
        raise DataError(f"{where}: field 'choice' is given, but item {item['id']!r} has no champion answer to "
                        f"compare with")
    label["choice"] = choice_to_side(item, choice)
    note = raw.get("note") or ""
    if not isinstance(note, str):
        raise DataError(f"{where}: field 'note' is {type(note).__name__}; text expected")
    if len(note) > MAX_NOTE:
        raise DataError(f"{where}: field 'note' has {len(note):,} characters; at most {MAX_NOTE:,}")
    label["note"] = note
    return label


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe.

    >>> csv_cell("=1+1"), csv_cell("-3"), csv_cell("fine"), csv_cell(4)
    ("'=1+1", "'-3", 'fine', 4)
    """
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def from_csv_cell(value: Any) -> Any:
    """The text `csv_cell` protected, as it was.

    >>> from_csv_cell("'=1+1"), from_csv_cell("'quoted"), from_csv_cell("-")
    ('=1+1', "'quoted", '-')
    """
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def is_empty(label: dict[str, Any]) -> bool:
    return all(label.get(k) in (None, "") for k in LABEL_FIELDS)


class LabelStore:
    """The labels of one run's review sample, kept in `review/labels.jsonl`."""

    def __init__(self, run: RunDir, sample: list[dict[str, Any]], sample_sha256: str):
        self.run, self.path = run, run / files.REVIEW_LABELS
        self.items = {item["id"]: item for item in sample}
        self.sample_sha256 = sample_sha256
        self.labels = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        labels: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line_no, row in enumerate(read_jsonl(self.path), start=1):
                if row.get("sample_sha256") != self.sample_sha256 or row.get("id") not in self.items:
                    raise DataError(f"{self.path}:{line_no}: label for {row.get('id')!r} belongs to another sample "
                                    f"than {self.run.path / files.REVIEW_SAMPLE}; move the file away to start over")
                labels[row["id"]] = row
        return labels

    def give(self, item_id: str, raw: dict[str, Any], where: str = "label") -> dict[str, Any]:
        """Validate and save one label at once (the whole file, atomically)."""
        if item_id not in self.items:
            raise DataError(f"{where}: field 'id' is {item_id!r}, which is not in this run's review sample")
        label = check_label(self.items[item_id], raw, where)
        label |= {"sample_sha256": self.sample_sha256, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save({item_id: label})
        return label

    def save(self, given: dict[str, dict[str, Any]]) -> None:
        """Add `given` to the labels the file holds now and write it whole, atomically, under a lock: another
        review server on the same run, or an import while this one runs, wrote labels this store has not read."""
        with exclusive(self.path):
            self.labels = self._read() | given
            order = [i for i in self.items if i in self.labels]
            atomic_write_text(self.path, "".join(json.dumps(self.labels[i]) + "\n" for i in order))

    def refresh(self) -> None:
        """Read the labels again: another server or an import may have added some."""
        self.labels = self._read()

    def progress(self) -> dict[str, int]:
        done = sum(1 for label in self.labels.values() if label.get("passed") is not None)
        return {"labelled": done, "total": len(self.items)}

    def export(self, out: Path) -> int:
        """The sample with its current labels as JSONL or CSV (by suffix); returns the rows written."""
        rows = []
        for item in self.items.values():
            pair = shown_pair(item) or ("", "")
            label = self.labels.get(item["id"], {})
            rows.append({"id": item["id"], "content_sha256": item["content_sha256"],
                         "instruction": item["instruction"], "reference": item["reference"],
                         "answer": item["answer"], "first_answer": pair[0],
                         "second_answer": pair[1], "passed": label.get("passed"), "grade": label.get("grade"),
                         "choice": side_to_choice(item, label.get("choice")), "note": label.get("note", "")})
        if out.suffix.lower() == ".csv":
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
            writer.writerows({k: csv_cell("" if v is None else v) for k, v in row.items()} for row in rows)
            atomic_write_text(out, text.getvalue())
        else:
            atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
        return len(rows)

    def import_file(self, path: Path) -> dict[str, int]:
        """Read labels from an exported file; all-or-nothing: any bad row refuses the whole file."""
        rows = _read_rows(path)
        seen: dict[str, int] = {}
        labels = []
        for line_no, row in rows:
            where = f"{path}:{line_no}"
            item_id = str(row.get("id") or "")
            if item_id not in self.items:
                raise DataError(f"{where}: field 'id' is {item_id!r}, which is not in this run's review sample")
            if item_id in seen:
                raise DataError(f"{where}: field 'id' {item_id!r} repeats line {seen[item_id]}")
            seen[item_id] = line_no
            if row.get("content_sha256") != self.items[item_id]["content_sha256"]:
                raise DataError(f"{where}: field 'content_sha256' does not match item {item_id!r} of the review "
                                f"sample: the item changed since this file was exported; export again")
            labels.append((item_id, check_label(self.items[item_id], row, where)))
        given = [(i, label) for i, label in labels if not is_empty(label)]
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.save({item_id: label | {"sample_sha256": self.sample_sha256, "at": at} for item_id, label in given})
        return {"rows": len(rows), "labelled": len(given), "left_empty": len(labels) - len(given)}


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's CSV often starts with a byte-order mark
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {exc.object[exc.start]:#x}); save the file as UTF-8 "
                        f"(a spreadsheet: CSV UTF-8)") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [f for f in ("id", "content_sha256") if f not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: header lacks {', '.join(missing)}; import a file written by --export")
        return [(reader.line_num, {k: from_csv_cell(v) for k, v in row.items()}) for row in reader]
    rows = []
    try:
        for line_no, row in numbered_json_lines(path, DataError):
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: a JSON object per line expected")
            rows.append((line_no, row))
    except RecursionError:
        raise DataError(f"{path}:{len(rows) + 1}: JSON nested too deeply to be a label") from None
    return rows
