"""How the run registry reaches its database: the URL (SQLite file or $SFTJUDGE_REGISTRY_URL), the engine, the
registry-wide write lock and the driver's own errors. The tables and what is recorded live in registry.py."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ENV_URL = "SFTJUDGE_REGISTRY_URL"
# PostgreSQL advisory lock taken by every registry write: the bytes of "sftjudge" read as one signed bigint,
# fixed so that every process and every version takes the same lock (advisory locks are per database).
PG_LOCK_KEY = int.from_bytes(b"sftjudge", "big", signed=True)


def registry_url(runs_dir: str | Path) -> sa.URL:
    """The registry for the runs in `runs_dir`: $SFTJUDGE_REGISTRY_URL when set, else `<runs_dir>/registry.sqlite`.

    The variable is read on every call, never at import, so a worker's environment decides. Raises ValueError
    when it is set but is not a database URL (the message does not repeat it: it may hold a password).
    """
    configured = os.environ.get(ENV_URL, "").strip()
    if configured:
        return _parse_url(configured, f"${ENV_URL}")
    return sa.URL.create("sqlite", database=str(Path(runs_dir) / "registry.sqlite"))


def _parse_url(text: str, source: str) -> sa.URL:
    try:
        return sa.make_url(text)
    except sa.exc.ArgumentError:
        raise ValueError(f"{source} is not a database URL: expected dialect+driver://user@host/database, e.g. "
                         f"postgresql+psycopg://sftjudge@db/sftjudge or sqlite:////abs/registry.sqlite") from None


def _as_url(target: str | Path | sa.URL) -> sa.URL:
    if isinstance(target, sa.URL):
        url = target
    elif isinstance(target, Path) or "://" not in target:
        url = sa.URL.create("sqlite", database=str(target))  # a plain path: the SQLite file
    else:
        url = _parse_url(target, "the run registry URL")
    if url.drivername in ("postgresql", "postgres"):  # psycopg 3 is the driver the `postgres` extra installs
        url = url.set(drivername="postgresql+psycopg")
    return url


def create_registry_engine(target: str | Path | sa.URL, sqlite_connect: Callable[[], Any]) -> sa.Engine:
    """An engine for the registry at `target`; SQLite connections come from `sqlite_connect()`.

    No pool: every registry method opens and closes its own connection, as a Registry is made per call and
    never disposed. Raises ValueError for a database whose writes this module cannot serialise, and
    ModuleNotFoundError naming the extra when the PostgreSQL driver is not installed.
    """
    url = _as_url(target)
    backend = url.get_backend_name()
    shown = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError(f"run registry {shown}: an in-memory SQLite registry would be empty on every "
                             f"connection; give a file, e.g. sqlite:////abs/path/registry.sqlite")
        return sa.create_engine(url, creator=lambda: _StatementsThroughConnection(sqlite_connect()),
                                poolclass=NullPool)
    if backend != "postgresql":
        raise ValueError(f"run registry {shown}: {backend} is not supported (promotions are serialised with "
                         f"SQLite's or PostgreSQL's locks); use postgresql+psycopg://... or a SQLite file")
    try:
        # READ COMMITTED whatever the server's default: a statement after the advisory lock then sees every
        # promotion committed before the lock was granted (a repeatable-read snapshot could predate it).
        return sa.create_engine(url, poolclass=NullPool, isolation_level="READ COMMITTED")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"run registry {shown} needs the PostgreSQL driver psycopg: "
                                  f"pip install 'sftjudge[postgres]' ({exc})") from exc


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A SQLite connection that waits up to 60 s for another writer's lock.

    isolation_level=None: sqlite3 opens no transaction of its own, so `BEGIN IMMEDIATE` (take_write_lock) is
    the first statement of every write transaction and the lock is held before the champion is read.
    """
    return sqlite3.connect(path, timeout=60, isolation_level=None)


def take_write_lock(db: sa.Connection) -> None:
    """Start the write transaction holding the registry-wide lock until commit or rollback."""
    if db.dialect.name == "sqlite":
        db.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        db.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.cast(PG_LOCK_KEY, sa.BigInteger))))


def driver_error(exc: sa.exc.DBAPIError, message: str) -> Exception:
    """The driver's own exception class (sqlite3.OperationalError, psycopg.OperationalError, ...) with
    `message`: callers and tests that catch the driver's errors keep working behind SQLAlchemy."""
    try:
        return type(exc.orig)(message) if exc.orig is not None else RuntimeError(message)
    except Exception:  # noqa: BLE001 - an exception class that will not take a message
        return RuntimeError(message)


class _StatementsThroughConnection:
    """A sqlite3 connection handed to SQLAlchemy, whose cursors run every statement through the connection's
    own `execute`.

    Why: `Registry._connect` is the seam where tests wrap the connection (tests/faults/faultkit.py AtPointerWrite
    kills the process or fills the disk just before the pointer write); SQLAlchemy only ever calls
    `cursor().execute`, which would bypass such a wrapper. Production runs the same path.
    """

    def __init__(self, db):
        self._db = db

    def cursor(self, *args):
        return _ConnectionCursor(self._db)

    def __getattr__(self, name):
        return getattr(self._db, name)


class _ConnectionCursor:
    def __init__(self, db):
        self._db, self._cursor = db, db.cursor()

    def execute(self, statement, parameters=()):
        self._cursor = self._db.execute(statement, parameters)
        return self

    def __getattr__(self, name):  # fetchone, description, rowcount, lastrowid, close: the last statement's
        return getattr(self._cursor, name)
