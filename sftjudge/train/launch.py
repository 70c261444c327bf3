"""Several data-parallel training processes under `accelerate launch`, started and watched by the sft stage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig, SFTConfig
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.runtime.oom import with_smaller_batch_on_oom
from sftjudge.runtime.threads import resolve_threads


def launch_command(run_path: Path, sft: SFTConfig, home: str | None, *, port: int,
                   threads: int | None = None) -> list[str]:
    """The `accelerate launch` command line that trains `run_path` as sft.num_processes data-parallel processes.

    The SFTConfig travels as one override (JSON is YAML), so the processes train with exactly the settings the
    stage holds - an out-of-memory retry's smaller batch included - not a re-read of the run's config.yaml.
    """
    n = sft.num_processes
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port)]
    if threads:
        command += ["--num_cpu_threads_per_process", str(max(1, threads // n))]
    command += ["-m", "sftjudge.cli", "train", str(run_path), "sft=" + json.dumps(sft.model_dump(mode="json"))]
    if home:
        command.append("home=" + json.dumps(home))
    return command


def fine_tune_launched(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Train as sft.num_processes data-parallel processes under `accelerate launch`; return their sft.json.

    Their output goes to stderr and is appended to the run's sft_launch.log. On out-of-memory the launch is
    repeated with half the batch and twice the gradient accumulation (training resumes from the last complete
    epoch), as in-process training does. Raises RuntimeError with the end of the log when the launch fails.
    """
    sft = config.sft

    def attempt(batch_size: int) -> dict[str, Any]:
        accum = sft.grad_accum * max(1, sft.batch_size // batch_size)
        settings = sft.model_copy(update={"batch_size": batch_size, "grad_accum": accum})
        (run / files.SFT_SUMMARY).unlink(missing_ok=True)  # a stale summary must not pass for this launch's result
        _run_logged(launch_command(run.path, settings, config.home, port=_free_port(),
                                   threads=resolve_threads(config.threads)),
                    run / files.SFT_LAUNCH_LOG)
        return json.loads((run / files.SFT_SUMMARY).read_text())

    return with_smaller_batch_on_oom(attempt, sft.batch_size)


def _run_logged(command: list[str], log: Path) -> None:
    """Run `command`, its output echoed to stderr and appended to `log`; raise with the log's tail on failure."""
    with log.open("a", encoding="utf-8") as handle, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            handle.write(line)
    if proc.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
        # The tail carries the ranks' traceback, so an out-of-memory there reads as one to the OOM retry.
        raise RuntimeError(f"`accelerate launch` of the sft training exited with {proc.returncode} "
                           f"(full output: {log}); last lines:\n{tail}")


def _free_port() -> int:
    """A TCP port free right now, so two launches on one machine do not both rendezvous on 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
