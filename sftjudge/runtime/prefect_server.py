"""The temporary Prefect server of a command run without one.

With no `PREFECT_API_URL`, Prefect starts a server of its own for the flow run and stops it at a normal exit; a
kill -9 of `sftjudge run` left it running (issue 26: still alive 79 s later, holding its port and SQLite file, until
someone finds it). This starts the same kind of server - Prefect's app under uvicorn on 127.0.0.1, UI off - as a
child that the kernel stops when the command dies (runtime.children), and points the command's Prefect client at it.
With `PREFECT_API_URL` set (a real server, a worker, the test harness) nothing is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from sftjudge.runtime.children import die_with_parent


def _free_port() -> int:
    from sftjudge.runtime.vllm_server import free_port

    return free_port()


def server_command(port: int) -> list[str]:
    """Prefect's API app under uvicorn, as Prefect's own temporary server runs it."""
    import prefect

    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def _wait_healthy(process: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the temporary Prefect server exited with code {process.returncode} before it "
                               f"answered; set PREFECT_API_URL to a running server (`prefect server start`)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s; raise "
                       f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a running server")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _drain_senders(timeout_s: float = 30) -> None:
    """Send the flow run's last logs and events while the server still listens (else each sender retries a
    server that is gone, then prints a connection error at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for sender in (APILogWorker, EventsWorker):
        sender.drain_all(timeout=timeout_s, at_exit=False)


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Inside: a Prefect API to run flows against; yields the temporary server's URL, or None when one is set."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None  # a configured server; or temporary servers are off, and Prefect says what to do
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    process = subprocess.Popen(server_command(port), env=env, preexec_fn=die_with_parent())
    try:
        _wait_healthy(process, url, settings.server.ephemeral.startup_timeout_seconds)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_senders()
    finally:
        _stop(process)
