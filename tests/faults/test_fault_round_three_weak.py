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
