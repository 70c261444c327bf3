"""Choosing the registry: the default SQLite file (old files still open), URLs, and the CLI's resolution."""

import sqlite3

import pytest
import sqlalchemy as sa

from sftjudge.cli import main
from sftjudge.run.registry import ENV_URL, Registry, registry_url

# The statements every registry.sqlite was created with before the SQLAlchemy port.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, created_at TEXT, base_model TEXT, method TEXT, dataset_sha256 TEXT,
    test_fingerprint TEXT, template_fingerprint TEXT, epochs INTEGER, learning_rate REAL, batch_size INTEGER,
    best_epoch INTEGER, best_val_loss REAL, train_loss_at_best REAL, judge TEXT, judge_score REAL,
    exact_match REAL, decision TEXT, reasons TEXT, checkpoint TEXT, run_dir TEXT
);
CREATE TABLE IF NOT EXISTS champion_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    previous_run_id TEXT,
    changed_at TEXT NOT NULL,
    how TEXT NOT NULL
);
"""


@pytest.fixture(autouse=True)
def no_registry_url(monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)


def _schema(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_a_registry_file_made_before_the_port_opens_and_keeps_its_schema(tmp_path):
    path = tmp_path / "registry.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO runs (run_id, created_at, judge_score, reasons) VALUES ('old', '1', 4.5, '[\"x\"]')")
        db.execute("INSERT INTO champion_history (run_id, changed_at, how) VALUES ('old', 't', 'decision')")
    before = _schema(path)
    reg = Registry.in_runs_dir(tmp_path)
    assert reg.path == path and reg.champion()["judge_score"] == 4.5 and reg.get("old")["reasons"] == ["x"]
    reg.record({"run_id": "new", "created_at": "2"}, promote=True, expected_champion="old")
    assert [(h["seq"], h["previous_run_id"]) for h in reg.champion_history()] == [(1, None), (2, "old")]
    # The tables it had keep their schema; the only change is the releases table (sftjudge release) added beside.
    after = _schema(path)
    assert [s for s in after if not s.startswith("CREATE TABLE releases")] == before
    assert len(after) == len(before) + 1


def test_a_new_registry_file_gets_the_same_columns_as_before(tmp_path):
    Registry(tmp_path / "new.sqlite")
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.executescript(OLD_SCHEMA)

    def columns(path):
        with sqlite3.connect(path) as db:
            return {t: [(c[1], c[2]) for c in db.execute(f"PRAGMA table_info({t})")]
                    for t in ("runs", "champion_history")}

    assert columns(tmp_path / "new.sqlite") == columns(tmp_path / "old.sqlite")


def test_the_url_is_read_when_asked_not_at_import(tmp_path, monkeypatch):
    assert registry_url(tmp_path).database == str(tmp_path / "registry.sqlite")
    monkeypatch.setenv(ENV_URL, "postgresql://team:s3cret@db.internal/sftjudge")
    url = registry_url(tmp_path)
    assert (url.host, url.database, url.password) == ("db.internal", "sftjudge", "s3cret")


@pytest.mark.parametrize("url, problem", [
    ("mysql+pymysql://u:s3cret@h/db", "mysql is not supported"),
    ("sqlite://", "in-memory SQLite registry"),
])
def test_urls_whose_writes_cannot_be_serialised_are_refused(url, problem):
    with pytest.raises(ValueError, match=problem) as info:
        Registry(url)
    assert "s3cret" not in str(info.value)


def test_postgres_urls_use_psycopg_3(monkeypatch):
    from sftjudge.run.registry_db import _as_url

    assert _as_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert _as_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert _as_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"  # an explicit choice stays


def test_a_malformed_url_in_the_environment_is_named_without_repeating_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_URL, "s3cret-not-a-url")
    with pytest.raises(ValueError, match=ENV_URL) as info:
        registry_url(tmp_path)
    assert "s3cret" not in str(info.value)


def test_the_cli_uses_the_same_registry_as_the_stages(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared" / "registry.sqlite"
    Registry(shared).record({"run_id": "a", "created_at": "1", "judge_score": 7.0}, promote=True)
    monkeypatch.setenv(ENV_URL, f"sqlite:///{shared}")
    assert main(["champion", "--runs-dir", str(tmp_path / "elsewhere")]) == 0
    assert "champion: a" in capsys.readouterr().out
    monkeypatch.delenv(ENV_URL)
    (tmp_path / "elsewhere").mkdir()
    assert main(["runs", "--runs-dir", str(tmp_path / "elsewhere")]) == 0
    assert f"no runs recorded in {tmp_path / 'elsewhere' / 'registry.sqlite'}" in capsys.readouterr().out
    # a runs directory that is not there is a typo, not an empty registry (issue 26): nothing is created
    with pytest.raises(SystemExit, match="no runs directory"):
        main(["runs", "--runs-dir", str(tmp_path / "elswhere")])
    assert not (tmp_path / "elswhere").exists()


def test_the_cli_refuses_an_unusable_url_without_printing_its_password(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_URL, "mysql+pymysql://u:s3cret@h/db")
    with pytest.raises(SystemExit) as info:
        main(["runs", "--runs-dir", str(tmp_path)])
    assert "not supported" in str(info.value.code) and "s3cret" not in str(info.value.code)
    assert "***" in str(info.value.code)


def test_a_missing_postgres_driver_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError("No module named 'psycopg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(ModuleNotFoundError, match=r"sftjudge\[postgres\]") as info:
        Registry(sa.make_url("postgresql+psycopg://u:s3cret@127.0.0.1:1/db"))
    assert "s3cret" not in str(info.value)
