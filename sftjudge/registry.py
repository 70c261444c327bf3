"""The run registry: an embedded SQLite database of runs plus the champion pointer and its history.

Recording a run's decision and moving the champion pointer happen in one transaction (`BEGIN IMMEDIATE`), so a
crash in between leaves the old champion intact and two runs finishing at once are serialised by SQLite's lock.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from types import EllipsisType
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT,
    created_at TEXT,
    base_model TEXT,
    method TEXT,
    dataset_sha256 TEXT,
    test_fingerprint TEXT,
    template_fingerprint TEXT,
    epochs INTEGER,
    learning_rate REAL,
    batch_size INTEGER,
    best_epoch INTEGER,
    best_val_loss REAL,
    train_loss_at_best REAL,
    judge TEXT,
    judge_score REAL,
    exact_match REAL,
    decision TEXT,
    reasons TEXT,
    checkpoint TEXT,
    run_dir TEXT
);
CREATE TABLE IF NOT EXISTS champion_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    previous_run_id TEXT,
    changed_at TEXT NOT NULL,
    how TEXT NOT NULL
);
"""

RUN_COLUMNS = ("run_id", "name", "created_at", "base_model", "method", "dataset_sha256", "test_fingerprint",
               "template_fingerprint", "epochs", "learning_rate", "batch_size", "best_epoch", "best_val_loss",
               "train_loss_at_best", "judge", "judge_score", "exact_match", "decision", "reasons", "checkpoint",
               "run_dir")


class ChampionChanged(RuntimeError):
    """Another run moved the champion pointer after this run's decision was made against the old champion."""


class Registry:
    """Runs and champion in `<runs_dir>/registry.sqlite`; every method opens its own short connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(SCHEMA)

    @classmethod
    def in_runs_dir(cls, runs_dir: str | Path) -> "Registry":
        return cls(Path(runs_dir) / "registry.sqlite")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def record(self, run: dict[str, Any], *, promote: bool, how: str = "decision",
               expected_champion: str | None | EllipsisType = ...) -> None:
        """Insert or replace the run's row and, when `promote`, move the champion pointer - atomically.

        `expected_champion` is the champion the decision was made against (None: there was none). If another
        run has become champion since, nothing is written and ChampionChanged is raised: decide again.
        """
        row = {k: run.get(k) for k in RUN_COLUMNS}
        if isinstance(row["reasons"], list):
            row["reasons"] = json.dumps(row["reasons"])
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock: two runs finishing at once cannot both promote over one champion.
                current = self._champion_id(db)
                if expected_champion is not ... and current != expected_champion:
                    raise ChampionChanged(f"run {row['run_id']} was decided against champion {expected_champion}, "
                                          f"but {current} is champion now")
                db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) "
                           f"VALUES ({', '.join('?' for _ in RUN_COLUMNS)})", [row[k] for k in RUN_COLUMNS])
                if promote and current != row["run_id"]:
                    db.execute("INSERT INTO champion_history (run_id, previous_run_id, changed_at, how) "
                               "VALUES (?, ?, ?, ?)",
                               (row["run_id"], current, _now(), how))
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, read-only, locked too long: say which file
                _rollback(db)
                raise sqlite3.OperationalError(f"run registry {self.path}: {exc}; nothing was recorded") from exc
            except BaseException:
                _rollback(db)
                raise

    @staticmethod
    def _champion_id(db: sqlite3.Connection) -> str | None:
        found = db.execute("SELECT run_id FROM champion_history ORDER BY seq DESC LIMIT 1").fetchone()
        return found["run_id"] if found else None

    def set_champion(self, run_id: str, how: str) -> str | None:
        """Point the champion at an already recorded run (manual promotion); returns the previous champion."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    raise KeyError(f"run {run_id!r} is not in the registry")
                current = self._champion_id(db)
                if current != run_id:
                    db.execute("INSERT INTO champion_history (run_id, previous_run_id, changed_at, how) "
                               "VALUES (?, ?, ?, ?)", (run_id, current, _now(), how))
                db.execute("COMMIT")
                return current
            except BaseException:
                _rollback(db)
                raise

    def rollback(self) -> tuple[str, str]:
        """Restore the champion before the current one; returns (demoted, restored)."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute("SELECT run_id, previous_run_id FROM champion_history ORDER BY seq DESC LIMIT 1"
                                  ).fetchone()
                if not rows or not rows["previous_run_id"]:
                    raise KeyError("there is no earlier champion to roll back to")
                db.execute("INSERT INTO champion_history (run_id, previous_run_id, changed_at, how) "
                           "VALUES (?, ?, ?, 'rollback')", (rows["previous_run_id"], rows["run_id"], _now()))
                db.execute("COMMIT")
                return rows["run_id"], rows["previous_run_id"]
            except BaseException:
                _rollback(db)
                raise

    def champion(self) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            run_id = self._champion_id(db)
            return self._run(db, run_id) if run_id else None

    def get(self, run_id: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            return self._run(db, run_id)

    def _run(self, db: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
        found = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if not found:
            return None
        run = dict(found)
        run["reasons"] = json.loads(run["reasons"]) if run["reasons"] else []
        return run

    def runs(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            ids = [r["run_id"] for r in db.execute("SELECT run_id FROM runs ORDER BY created_at, run_id")]
            return [self._run(db, run_id) for run_id in ids]

    def champion_history(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            return [dict(r) for r in db.execute("SELECT * FROM champion_history ORDER BY seq")]


def _rollback(db: sqlite3.Connection) -> None:
    # After some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has already rolled the transaction back; a second
    # ROLLBACK would raise "no transaction is active" and hide the error that matters.
    if db.in_transaction:
        db.execute("ROLLBACK")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
