"""Issue 26's weak spots: what a command leaves running after kill -9, and paths and URLs it must refuse or mask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .faultkit import REPO

PREFECT_APP = "prefect.server.api.server:create_app"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.model
def test_the_temporary_prefect_server_dies_with_a_killed_run(tmp_path, tiny_data, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PYTHONPATH=str(REPO))
    cli = subprocess.Popen([sys.executable, "-m", "sftjudge.cli", "run", str(REPO / "configs/tiny.yaml"),
                            f"runs_dir={tmp_path / 'runs'}", f"data.path={tiny_data}", "threads=1", "data.cache=false",
                            f"judge.judges_dir={REPO / 'judges'}"], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 180
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = next((p for p in _children(cli.pid) if PREFECT_APP in _cmdline(p)), None)
            time.sleep(0.05)
        assert server is not None, "the run never started a Prefect server"
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        gone_by = time.monotonic() + 20
        while _alive(server) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _alive(server), "the Prefect server outlived the killed command"
    finally:
        if cli.poll() is None:
            cli.kill()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


SERVE_THEN_DIE = """
import os, signal, sys
from sftjudge.runtime.vllm_server import ServeSettings, start_server
server = start_server(sys.executable, {model!r}, ServeSettings(startup_s=120))
print(server.process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.model
def test_a_stage_server_dies_with_a_killed_stage(stand_in, tiny_model_dir):
    """On a GPU worker an orphaned `vllm serve` would hold the card's memory until someone found it."""
    proc = subprocess.run([sys.executable, "-c", SERVE_THEN_DIE.format(model=str(tiny_model_dir))],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == -9, proc.stderr[-2000:]
    server = int(proc.stdout.split()[0])
    try:
        gone_by = time.monotonic() + 20
        while _alive(server) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _alive(server), "the served engine outlived the killed stage"
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)


def test_one_logging_attempt_against_a_dead_mlflow_server_ends_in_seconds(tmp_path, monkeypatch):
    from sftjudge.config import RunConfig
    from sftjudge.runtime.vllm_server import free_port
    from sftjudge.track.mlflow_run import track_run

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    config = RunConfig(runs_dir=str(tmp_path), tracking={"uri": f"http://127.0.0.1:{free_port()}", "retries": 0})
    started = time.monotonic()
    with pytest.raises(Exception, match="127.0.0.1"):
        track_run(tmp_path / "no-run", config)
    assert time.monotonic() - started < 20  # before: 4 min 35 s of MLflow's own retries
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # only for the attempt


@pytest.mark.parametrize("setting, instead", [
    ("tracking.uri=http://me:s3cret@mlflow.internal:5000", "MLFLOW_TRACKING_PASSWORD"),
    ("judge.openai.base_url=https://judge:s3cret@judge.internal/v1", "judge.openai.api_key_env"),
    ("vllm.base_url=http://worker:s3cret@127.0.0.1:8000/v1", "needs none")])
def test_a_password_in_a_configured_url_is_refused_without_repeating_it(tmp_path, capsys, setting, instead):
    from sftjudge import cli

    code = cli.main(["run", setting, f"runs_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and instead in err and ":***@" in err, err  # before: stored in config.yaml, MLflow, Prefect
    assert "s3cret" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("runs_dir, what", [("/", "the root of the filesystem"), ("/proc", "a system folder"),
                                            ("/sys/kernel", "a system folder")])
def test_a_runs_directory_at_the_root_or_in_a_system_folder_is_refused(capsys, runs_dir, what):
    from sftjudge import cli
    from sftjudge.config_yaml import load_config
    from sftjudge.errors import ConfigError

    with pytest.raises(ConfigError, match=f"runs_dir {runs_dir} is {what}"):
        load_config(None, [f"runs_dir={runs_dir}"])
    with pytest.raises(SystemExit, match=f"--runs-dir {runs_dir} is {what}"):
        cli.main(["runs", "--runs-dir", runs_dir])  # before: a registry.sqlite written at /
    assert runs_dir != "/" or not Path("/registry.sqlite").exists()


def test_a_symlinked_manifest_is_refused_naming_it(tmp_path):
    from review_kit import judged_run

    from sftjudge import cli
    from sftjudge.errors import RunFileError
    from sftjudge.run import files

    runs = tmp_path / "runs"
    other, run = judged_run(runs, "other", [5.0]), judged_run(runs, "mine", [6.0])
    (run / files.MANIFEST).unlink()
    (run / files.MANIFEST).symlink_to(other / files.MANIFEST)  # `show mine` showed the other run as this one
    with pytest.raises(RunFileError, match="manifest.json is a symbolic link"):
        run.manifest()
    assert cli.main(["show", "mine", "--runs-dir", str(runs)]) == 2


@pytest.mark.model
def test_an_export_under_a_file_or_under_proc_is_refused_before_any_model_loads(base_run, tmp_path, capsys):
    from sftjudge import cli

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out, says in ((a_file / "export", "is a file, so no folder can be made under it"),
                      (Path("/proc/export"), "cannot write under /proc")):
        code = cli.main(["export", base_run.name, str(out), "--runs-dir", str(base_run.parent)])
        err = capsys.readouterr().err
        assert code == 2 and says in err, err  # before: FileExistsError / FileNotFoundError, "unexpected error"
