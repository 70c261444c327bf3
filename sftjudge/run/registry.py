"""The run registry: a database of runs plus the champion pointer and its history (SQLAlchemy Core).

SQLite (`<runs_dir>/registry.sqlite`) is the default; `SFTJUDGE_REGISTRY_URL` points every process at a shared
PostgreSQL instead. Recording a run's decision and moving the champion pointer happen in one transaction that
holds the registry's write lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL `pg_advisory_xact_lock`), so a crash in
between leaves the old champion intact and two runs finishing at once are serialised.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import EllipsisType
from typing import Any

import sqlalchemy as sa

from sftjudge.errors import RegistryError
# How the registry reaches its database (URL, engine, write lock, driver errors) lives in registry_db.py.
from sftjudge.run.registry_db import ENV_URL  # noqa: F401 - imported from here by callers and tests
from sftjudge.run.registry_db import (
    connect_sqlite,
    create_registry_engine,
    driver_error,
    registry_url,
    take_write_lock,
)

metadata = sa.MetaData()
# REAL on SQLite keeps a new file's schema what it has always been; DOUBLE PRECISION elsewhere (REAL is 4 bytes).
_REAL = sa.Double().with_variant(sa.REAL(), "sqlite")

runs_table = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    *(sa.Column(name, sa.Text) for name in ("name", "created_at", "base_model", "method", "dataset_sha256",
                                            "test_fingerprint", "template_fingerprint")),
    sa.Column("epochs", sa.Integer), sa.Column("learning_rate", _REAL), sa.Column("batch_size", sa.Integer),
    sa.Column("best_epoch", sa.Integer), sa.Column("best_val_loss", _REAL), sa.Column("train_loss_at_best", _REAL),
    sa.Column("judge", sa.Text), sa.Column("judge_score", _REAL), sa.Column("exact_match", _REAL),
    sa.Column("decision", sa.Text), sa.Column("reasons", sa.Text), sa.Column("checkpoint", sa.Text),
    sa.Column("run_dir", sa.Text),
)

history_table = sa.Table(
    "champion_history", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Text, sa.ForeignKey("runs.run_id"), nullable=False),
    sa.Column("previous_run_id", sa.Text),
    sa.Column("changed_at", sa.Text, nullable=False),
    sa.Column("how", sa.Text, nullable=False),
    sqlite_autoincrement=True,  # as the file was always created (AUTOINCREMENT: a deleted seq is never reused)
)

# A release: a person's acceptance set passed the bar for this run (sftjudge release). Additive: an older registry
# gets the table on first open.
releases_table = sa.Table(
    "releases", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Text, sa.ForeignKey("runs.run_id"), nullable=False),
    sa.Column("released_at", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),  # JSON: sample hash, items, passes, pass rate, agreement
    sa.Column("bar", sa.Text, nullable=False),  # JSON: the settings it had to meet
    sqlite_autoincrement=True,
)

RUN_COLUMNS = tuple(runs_table.columns.keys())

# The champion is the run of the latest history entry; there is no separate pointer row to keep in step.
_CHAMPION_ID = sa.select(history_table.c.run_id).order_by(history_table.c.seq.desc()).limit(1)


class ChampionChanged(RuntimeError):
    """Another run moved the champion pointer after this run's decision was made against the old champion."""


class Registry:
    """Runs and champion in one database; every method opens its own short connection (none is pooled).

    `target` is a SQLAlchemy URL (`postgresql+psycopg://user@host/db`, `sqlite:////abs/registry.sqlite`) or the
    path of a SQLite file. Raises ValueError for a URL this registry cannot lock (only SQLite and PostgreSQL),
    ModuleNotFoundError naming the extra to install when the PostgreSQL driver is missing.
    """

    def __init__(self, target: str | Path | sa.URL):
        # A lambda, not the bound method: `_connect` is looked up on every connection, so patching the class
        # after this registry was made still takes effect.
        self.engine = create_registry_engine(target, lambda: self._connect())
        self.url = self.engine.url
        self.path = Path(self.url.database) if self.url.get_backend_name() == "sqlite" else None
        # Where the registry is, for messages and logs: the file, or the URL without its password.
        self.where = str(self.path) if self.path else self.url.render_as_string(hide_password=True)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and self.path.stat().st_size == 0:
                # SQLite would take a 0-byte file for a new database and every run and champion would vanish.
                raise RegistryError(f"{self.path} is empty (0 bytes): the registry was truncated, not created. Restore "
                                    f"it from a backup, or rebuild it from the run directories: `sftjudge registry "
                                    f"rebuild --runs-dir {self.path.parent}`")
        try:
            self._create_tables()
        except sqlite3.DatabaseError as exc:  # as `_named_errors` raises the driver's own class
            if not self.path or isinstance(exc, sqlite3.OperationalError):  # locked, read-only: not damage
                raise
            raise RegistryError(f"{self.path} is not a registry database ({exc}): it was damaged or overwritten. "
                                f"Restore it from a backup, or rebuild it from the run directories: `sftjudge registry "
                                f"rebuild --runs-dir {self.path.parent}`") from None

    @classmethod
    def in_runs_dir(cls, runs_dir: str | Path) -> "Registry":
        """The registry of the runs in `runs_dir`: at $SFTJUDGE_REGISTRY_URL when set (read now, on every call),
        else `<runs_dir>/registry.sqlite`. Every caller (stages, CLI) opens it through here, so all agree."""
        return cls(registry_url(runs_dir))

    def __repr__(self) -> str:
        return f"Registry({self.where!r})"

    def _connect(self):
        """A new SQLite DBAPI connection (the engine's creator). Kept as a method: the fault tests wrap it to
        crash or fill the disk at the pointer write."""
        return connect_sqlite(self.path)

    def _create_tables(self) -> None:
        # Checked without the lock first: opening an existing registry (a read-only CLI listing) writes nothing.
        with self._reading() as db:
            inspector = sa.inspect(db)
            if all(inspector.has_table(name) for name in metadata.tables):
                return
        with self._writing() as db:  # under the write lock: two workers starting at once do not race the DDL
            metadata.create_all(db, checkfirst=True)

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        with self._named_errors(""), self.engine.connect() as db:
            yield db

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """One transaction holding the registry's write lock from its first statement until commit."""
        with self._named_errors("; nothing was recorded"), self.engine.connect() as db:
            take_write_lock(db)
            try:
                yield db
                db.commit()
            except BaseException:
                db.rollback()
                raise

    @contextmanager
    def _named_errors(self, consequence: str) -> Iterator[None]:
        # Disk full, read-only file, lock held too long, server gone: the driver's own error, naming the registry.
        try:
            yield
        except sa.exc.DBAPIError as exc:
            raise driver_error(exc, f"run registry {self.where}: {exc.orig}{consequence}") from exc

    def record(self, run: dict[str, Any], *, promote: bool, how: str = "decision",
               expected_champion: str | None | EllipsisType = ...) -> None:
        """Insert or replace the run's row and, when `promote`, move the champion pointer - atomically.

        `expected_champion` is the champion the decision was made against (None: there was none). If another
        run has become champion since, nothing is written and ChampionChanged is raised: decide again.
        """
        row = {k: run.get(k) for k in RUN_COLUMNS}
        if isinstance(row["reasons"], list):
            row["reasons"] = json.dumps(row["reasons"])
        with self._writing() as db:
            # Read under the write lock: two runs finishing at once cannot both promote over one champion.
            current = db.scalar(_CHAMPION_ID)
            if expected_champion is not ... and current != expected_champion:
                raise ChampionChanged(f"run {row['run_id']} was decided against champion {expected_champion}, "
                                      f"but {current} is champion now")
            # Update, else insert: portable, and unlike SQLite's INSERT OR REPLACE it never deletes a row that
            # champion_history refers to (PostgreSQL enforces that foreign key).
            updated = db.execute(sa.update(runs_table).where(runs_table.c.run_id == row["run_id"]).values(row))
            if updated.rowcount == 0:
                db.execute(sa.insert(runs_table).values(row))
            if promote and current != row["run_id"]:
                _append_history(db, row["run_id"], current, how)

    def set_champion(self, run_id: str, how: str) -> str | None:
        """Point the champion at an already recorded run (manual promotion); returns the previous champion.

        Raises RegistryError (a KeyError) when the registry has no such run."""
        with self._writing() as db:
            if db.scalar(sa.select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)) is None:
                raise RegistryError(f"run {run_id!r} is not in the registry {self.where}")
            current = db.scalar(_CHAMPION_ID)
            if current != run_id:
                _append_history(db, run_id, current, how)
            return current

    def rollback(self) -> tuple[str, str]:
        """Restore the champion before the current one; returns (demoted, restored).

        Each rollback walks one step further back through the promotions (A -> B -> C: C to B, then B to A), never
        back and forth between the last two. Raises RegistryError (a KeyError) when there is no earlier champion."""
        with self._writing() as db:
            rows = db.execute(sa.select(history_table.c.run_id, history_table.c.previous_run_id, history_table.c.how)
                              .order_by(history_table.c.seq)).all()
            chain = champion_chain([(r.run_id, r.previous_run_id, r.how) for r in rows])
            if len(chain) < 2:
                raise RegistryError("there is no earlier champion to roll back to")
            _append_history(db, chain[-2], chain[-1], "rollback")
            return chain[-1], chain[-2]

    def champion(self) -> dict[str, Any] | None:
        """The champion's run row, or None before the first promotion."""
        with self._reading() as db:
            found = db.execute(sa.select(runs_table).where(runs_table.c.run_id == _CHAMPION_ID.scalar_subquery()))
            return _run_row(found.first())

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run's row (reasons as a list), or None when it was never recorded."""
        with self._reading() as db:
            return _run_row(db.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).first())

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run, oldest first."""
        with self._reading() as db:
            found = db.execute(sa.select(runs_table).order_by(runs_table.c.created_at, runs_table.c.run_id))
            return [_run_row(r) for r in found]

    def release(self, run_id: str, evidence: dict[str, Any], bar: dict[str, Any]) -> dict[str, Any]:
        """Record that `run_id`, the current champion, passed its human acceptance set; returns the record.

        Raises RegistryError (a KeyError) when `run_id` is not the champion: only a champion is released."""
        with self._writing() as db:
            current = db.scalar(_CHAMPION_ID)
            if current != run_id:
                raise RegistryError(f"run {run_id!r} is not the champion ({current or 'there is none'}); only the "
                                    f"champion can be released")
            record = {"run_id": run_id, "released_at": _now(), "evidence": evidence, "bar": bar}
            _insert_release(db, record)
            return record

    def restore_release(self, record: dict[str, Any]) -> None:
        """Put back a release recorded earlier (from its run directory's review/release.json), as it was."""
        with self._writing() as db:
            _insert_release(db, record)

    def releases(self) -> list[dict[str, Any]]:
        """Every release, oldest first, evidence and bar as dicts."""
        with self._reading() as db:
            rows = db.execute(sa.select(releases_table).order_by(releases_table.c.seq))
            return [dict(r._mapping) | {"evidence": json.loads(r.evidence), "bar": json.loads(r.bar)} for r in rows]

    def champion_history(self) -> list[dict[str, Any]]:
        """Every move of the champion pointer, oldest first: seq, run_id, previous_run_id, changed_at, how."""
        with self._reading() as db:
            return [dict(r._mapping) for r in db.execute(sa.select(history_table).order_by(history_table.c.seq))]


def champion_chain(history: list[tuple[str, str | None, str]]) -> list[str]:
    """The champions still standing, oldest first, from the history of (run_id, previous_run_id, how) moves.

    A promotion stacks a champion; a rollback takes the top one off.

    >>> champion_chain([("a", None, "auto"), ("b", "a", "auto"), ("a", "b", "rollback")])
    ['a']
    >>> champion_chain([("a", None, "auto"), ("b", "a", "auto"), ("c", "b", "manual"), ("b", "c", "rollback")])
    ['a', 'b']
    """
    chain: list[str] = []
    for run_id, previous, how in history:
        if how == "rollback" and chain and chain[-1] == previous:
            chain.pop()
            if not chain or chain[-1] != run_id:
                chain.append(run_id)
        else:
            chain.append(run_id)
    return chain


def _append_history(db: sa.Connection, run_id: str, previous: str | None, how: str) -> None:
    db.execute(sa.insert(history_table).values(run_id=run_id, previous_run_id=previous, changed_at=_now(), how=how))


def _insert_release(db: sa.Connection, record: dict[str, Any]) -> None:
    db.execute(sa.insert(releases_table).values(run_id=record["run_id"], released_at=record["released_at"],
                                                evidence=json.dumps(record["evidence"]),
                                                bar=json.dumps(record["bar"])))


def _run_row(found: sa.Row | None) -> dict[str, Any] | None:
    if found is None:
        return None
    run = dict(found._mapping)
    run["reasons"] = json.loads(run["reasons"]) if run["reasons"] else []
    return run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
