"""Crash-tolerant keyed JSONL: append finished items one batch at a time, read them back after a crash.

A retried stage loads the file, skips every key already there, and only does the rest; a torn last line from
an interrupted write is cut off (so the next append starts a clean line) and counted, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class KeyedJsonl:
    """An append-only JSONL file of records, each carrying its `key` (generations, judgments).

    `load` tolerates a crash mid-write: a last line without its newline is cut off the file (so the next append
    starts a fresh line) and counted, as is any line that is not a JSON object with a key.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped_lines = 0

    def load(self, *, repair: bool = True) -> KeyedJsonl:
        """Read the file (if any) into `records`; return self. `repair=False` reads without cutting the file."""
        if not self.path.is_file():
            return self
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            self.dropped_lines += 1
            log.warning("%s: dropped a truncated last line (%d bytes) left by an interrupted write",
                        self.path, len(data) - complete)
            if repair:
                os.truncate(self.path, complete)
        for number, line in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                self.dropped_lines += 1
                log.warning("%s line %d: not a keyed record, ignored", self.path, number)
        return self

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records and fsync, so finished work survives a crash right after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        self.records.update((r["key"], r) for r in records)
