"""Registry behaviours against both backends: the default SQLite file and a real PostgreSQL server.

The PostgreSQL server is started here for the session from the machine's own binaries (initdb, pg_ctl; Debian's
`postgresql` package) on 127.0.0.1; without them, or without psycopg, the postgres cases are skipped, saying why.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from sftjudge.run.registry import ENV_URL, ChampionChanged, Registry

REPO = Path(__file__).resolve().parent.parent


def row(run_id, score=5.0, created="2026-01-01"):
    return {"run_id": run_id, "created_at": created, "judge_score": score, "reasons": ["r"], "decision": "promote"}


@pytest.fixture(autouse=True)
def no_registry_url(monkeypatch):
    # A developer's own $SFTJUDGE_REGISTRY_URL must never receive test runs.
    monkeypatch.delenv(ENV_URL, raising=False)


PG_PASSWORD = "pg-test-secret"


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: then run it as the `postgres` account Debian's package creates."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1 for this session; yields its superuser's URL.

    TCP logins need a password (scram-sha-256), as on a team's server: the URLs in these tests carry one."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install -y postgresql")
    as_user = _as_server_user()
    home = Path(tempfile.mkdtemp(prefix="sftjudge-pg-"))  # not under pytest's root-only tmp: the server reads it
    if as_user:
        pw = pwd.getpwnam("postgres")
        os.chown(home, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    (home / "pwfile").write_text(PG_PASSWORD + "\n")
    if as_user:
        os.chown(home / "pwfile", pw.pw_uid, pw.pw_gid)

    def run(program, *args):
        done = subprocess.run([*as_user, str(bindir / program), *args], check=False, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:  # binaries present but the server will not start: a real failure, not a skip
            log = (home / "log").read_text() if (home / "log").exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}{log}")

    try:
        run("initdb", "-D", str(home / "data"), "-U", "postgres", f"--pwfile={home / 'pwfile'}", "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        run("pg_ctl", "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield sa.URL.create("postgresql+psycopg", username="postgres", password=PG_PASSWORD, host="127.0.0.1",
                            port=port, database="postgres")
    finally:
        if (home / "data" / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(home / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def _new_database(server: sa.URL) -> sa.URL:
    import psycopg

    name = f"registry_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=server.host, port=server.port, user=server.username, password=server.password,
                         dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return server.set(database=name)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """Where a fresh, empty registry lives: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return tmp_path / "registry.sqlite"
    return _new_database(request.getfixturevalue("postgres_server"))


def test_promotion_moves_champion_with_history(target):
    reg = Registry(target)
    reg.record(row("a", created="1"), promote=True)
    reg.record(row("b", created="2"), promote=False)
    assert reg.champion()["run_id"] == "a"
    reg.record(row("c", created="3"), promote=True)
    assert reg.champion()["run_id"] == "c"
    assert [h["previous_run_id"] for h in reg.champion_history()] == [None, "a"]
    assert [r["run_id"] for r in reg.runs()] == ["a", "b", "c"]
    assert reg.get("b")["reasons"] == ["r"] and reg.get("a")["judge_score"] == 5.0
    assert reg.get("nope") is None


def test_rerecording_the_champion_updates_its_row_and_keeps_history(target):
    reg = Registry(target)
    reg.record(row("a"), promote=True)
    reg.record(row("a", score=6.5) | {"decision": "hold"}, promote=True)  # the history refers to a's row
    assert reg.get("a")["judge_score"] == 6.5 and reg.get("a")["decision"] == "hold"
    assert [h["run_id"] for h in reg.champion_history()] == ["a"] and len(reg.runs()) == 1


def test_crash_inside_record_leaves_champion_and_runs_intact(target):
    reg = Registry(target)
    reg.record(row("a"), promote=True)

    def fail_at_pointer_write(conn, cursor, statement, *args):  # after b's row was written, same transaction
        if statement.lstrip().startswith("INSERT INTO champion_history"):
            raise OSError(28, "No space left on device")

    sa.event.listen(reg.engine, "before_cursor_execute", fail_at_pointer_write)
    with pytest.raises(OSError, match="No space left"):
        reg.record(row("b"), promote=True)
    sa.event.remove(reg.engine, "before_cursor_execute", fail_at_pointer_write)
    assert reg.champion()["run_id"] == "a"
    assert [r["run_id"] for r in reg.runs()] == ["a"]


KILL_AT_POINTER_WRITE = """
import os, signal, sys
import sqlalchemy as sa
from sftjudge.run.registry import Registry

def die_at_pointer_write(conn, cursor, statement, *args):
    if statement.lstrip().startswith("INSERT INTO champion_history"):
        os.kill(os.getpid(), signal.SIGKILL)

sa.event.listen(sa.Engine, "before_cursor_execute", die_at_pointer_write)
Registry(sys.argv[1]).record({"run_id": "b", "created_at": "2"}, promote=True)
"""


def test_sigkill_inside_a_promotion_keeps_the_old_champion(target):
    reg = Registry(target)
    reg.record(row("a"), promote=True)
    url = target.render_as_string(hide_password=False) if isinstance(target, sa.URL) else str(target)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_POINTER_WRITE, url], check=False, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert reg.champion()["run_id"] == "a"
    assert reg.get("b") is None  # inserted in the killed transaction, rolled back with it
    reg.record(row("b"), promote=True)  # and the lock died with the process
    assert reg.champion()["run_id"] == "b"


def test_concurrent_promotions_serialise(target):
    reg = Registry(target)
    errors = []

    def promote(i):
        try:
            Registry(target).record(row(f"r{i}", created=str(i)), promote=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = reg.champion_history()
    assert len(history) == 8 and len(reg.runs()) == 8
    # each promotion saw the one before it: the chain of previous ids is unbroken
    assert [h["previous_run_id"] for h in history[1:]] == [h["run_id"] for h in history[:-1]]


def test_a_promotion_waits_for_the_write_lock_and_then_sees_the_champion_it_held(target):
    reg = Registry(target)
    reg.record(row("a"), promote=True)
    late = threading.Thread(target=lambda: Registry(target).record(row("late"), promote=True,
                                                                   expected_champion="held"))
    with reg._writing() as db:  # another promotion, mid-transaction, holding the lock
        db.execute(sa.text("INSERT INTO runs (run_id, created_at) VALUES ('held', '1')"))
        db.execute(sa.text("INSERT INTO champion_history (run_id, previous_run_id, changed_at, how) "
                           "VALUES ('held', 'a', 'now', 'decision')"))
        late.start()
        time.sleep(1.0)
        assert late.is_alive(), "the second promotion did not wait for the first one's lock"
    late.join(timeout=60)
    assert not late.is_alive()
    # it read the champion only once the lock was its own: against 'held', so its expectation held too
    assert [(h["run_id"], h["previous_run_id"]) for h in reg.champion_history()] == [
        ("a", None), ("held", "a"), ("late", "held")]


def test_a_record_against_a_stale_champion_writes_nothing(target):
    reg = Registry(target)
    reg.record({"run_id": "a", "created_at": "1"}, promote=True, expected_champion=None)
    reg.record({"run_id": "b", "created_at": "2"}, promote=True, expected_champion="a")
    with pytest.raises(ChampionChanged, match="decided against champion a, but b is champion now"):
        reg.record({"run_id": "c", "created_at": "3"}, promote=True, expected_champion="a")
    assert reg.champion()["run_id"] == "b" and reg.get("c") is None
    assert [h["run_id"] for h in reg.champion_history()] == ["a", "b"]


def test_manual_promotion_and_rollback_restore_the_previous_champion(target):
    reg = Registry(target)
    reg.record(row("a", created="1"), promote=True)
    reg.record(row("b", created="2"), promote=False)
    assert reg.set_champion("b", "manual") == "a"
    assert reg.champion()["run_id"] == "b"
    assert reg.champion_history()[-1]["how"] == "manual"
    assert reg.rollback() == ("b", "a")
    assert reg.champion()["run_id"] == "a"
    assert reg.champion_history()[-1]["how"] == "rollback"
    with pytest.raises(KeyError):
        reg.set_champion("nope", "manual")


def test_rollback_without_history_is_refused(target):
    reg = Registry(target)
    reg.record(row("a"), promote=True)
    with pytest.raises(KeyError, match="no earlier champion"):
        reg.rollback()


def test_in_runs_dir_follows_the_url_in_the_environment_read_at_call_time(target, tmp_path, monkeypatch):
    url = target.render_as_string(hide_password=False) if isinstance(target, sa.URL) else f"sqlite:///{target}"
    monkeypatch.setenv(ENV_URL, url)
    Registry.in_runs_dir(tmp_path / "runs").record(row("a"), promote=True)
    assert Registry(target).champion()["run_id"] == "a"
    assert not (tmp_path / "runs" / "registry.sqlite").exists()
    monkeypatch.delenv(ENV_URL)
    assert Registry.in_runs_dir(tmp_path / "runs").champion() is None  # back to the runs directory's file


def test_postgres_errors_and_names_never_show_the_password(postgres_server):
    url = _new_database(postgres_server)
    reg = Registry(url)
    assert PG_PASSWORD not in reg.where and PG_PASSWORD not in repr(reg) and "postgres:***@" in reg.where
    for wrong in (url.set(database="no_such_database"), url.set(password="wrong-secret")):
        with pytest.raises(Exception) as info:  # noqa: B017 - psycopg's own OperationalError
            Registry(wrong)
        text = "".join(traceback.format_exception(info.value))
        assert "run registry postgresql+psycopg://postgres:***@127.0.0.1" in text
        assert PG_PASSWORD not in text and "wrong-secret" not in text
