"""The sft stage's work: load the student, train with out-of-memory fallback, write metrics, summary and plot.

`fine_tune` trains in this process, or - started by `accelerate launch` - as one of N data-parallel processes;
`fine_tune_launched` starts those N processes (`sftjudge train RUN_DIR` under `accelerate launch`) and reads
their result back from the run directory.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sftjudge.config import SFTConfig
from sftjudge.distributed import current
from sftjudge.oom import with_smaller_batch_on_oom
from sftjudge.rundir import RunDir, atomic_write_json, write_jsonl
from sftjudge.sft import EpochMetrics, SFTResult, TrainSettings, load_causal_lm, train
from sftjudge.split import load_split


def settings_from_config(sft: SFTConfig) -> TrainSettings:
    fields = {k: v for k, v in sft.model_dump().items() if k in TrainSettings.__dataclass_fields__}
    return TrainSettings(**fields | {"target_modules": tuple(sft.target_modules)})


def reference_loss(run: RunDir, sft: SFTConfig, base_path: str, checkpoint: str, batch_size: int) -> float:
    """Mean completion loss of the test split's reference answers under the chosen checkpoint.

    exp() of it is the perplexity of the references: the sanity check of the evaluation stack (if it rises after
    fine-tuning, something is fundamentally wrong), measured exactly like the train and val losses.
    """
    from pathlib import Path

    from sftjudge.batching import mean_loss
    from sftjudge.chat import tokenize_for_training
    from sftjudge.checkpoints import checkpoint_meta, restore_weights
    from sftjudge.device import use_bf16
    from sftjudge.sft import attach_adapters

    model, tokenizer = load_causal_lm(base_path, trust_remote_code=sft.trust_remote_code)
    settings = settings_from_config(sft)
    model = attach_adapters(model, settings)
    restore_weights(model, Path(checkpoint), checkpoint_meta(Path(checkpoint))["method"])
    examples = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in load_split(run.path, "test")]
    return mean_loss(model, examples, batch_size=batch_size * 2, pad_id=tokenizer.pad_token_id,
                     bf16=use_bf16(sft.precision), desc="test reference loss")


def fine_tune(run: RunDir, sft: SFTConfig, base_path: str) -> tuple[SFTResult, dict[str, Any]]:
    """Train on the run's splits into run/checkpoints; resume from the newest complete epoch if there is one.

    On out-of-memory the batch is halved and gradient accumulation doubled, so the effective batch - and the
    optimisation - stays the same. Writes metrics.jsonl, sft.json and loss_curve.png. Under `accelerate launch`
    only the main process writes; the others return the same result with an empty summary.
    """
    from sftjudge.report import plot_losses

    ranks = current()
    settings = settings_from_config(sft)
    train_rows, val_rows = load_split(run.path, "train"), load_split(run.path, "val")
    metrics_path = run / "metrics.jsonl"

    def log_epoch(m: EpochMetrics) -> None:
        # Appended as each epoch ends so progress is visible; rewritten whole below (a resumed run included).
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(m)) + "\n")

    used = {"batch_size": settings.batch_size}

    def attempt(batch_size: int) -> SFTResult:
        used["batch_size"] = batch_size
        accum = settings.grad_accum * max(1, settings.batch_size // batch_size)
        model, tokenizer = load_causal_lm(base_path, trust_remote_code=sft.trust_remote_code)
        return train(model, tokenizer, train_rows, val_rows, replace(settings, batch_size=batch_size,
                                                                     grad_accum=accum),
                     run / "checkpoints", on_epoch=log_epoch)

    if ranks.world > 1:
        # A rank retrying alone would leave the others waiting in an all-reduce; the launching stage retries the
        # whole launch with a smaller batch instead (fine_tune_launched).
        result = attempt(settings.batch_size)
    else:
        result = with_smaller_batch_on_oom(attempt, settings.batch_size)
    if not ranks.is_main:
        return result, {}
    write_jsonl(metrics_path, [asdict(m) for m in result.epochs])
    test_loss = reference_loss(run, sft, base_path, result.best_checkpoint, used["batch_size"])
    base_params = result.total_params - (result.trainable_params if sft.method == "lora" else 0)
    summary = result.to_json() | {"base_model": sft.base_model, "base_model_path": base_path, "method": sft.method,
                                  "base_params": base_params, "batch_size": used["batch_size"],
                                  "num_processes": ranks.world, "test_loss": round(test_loss, 6),
                                  "test_ppl": round(math.exp(min(test_loss, 50)), 4)}
    atomic_write_json(run / "sft.json", summary)
    plot_losses(result.epochs, run / "loss_curve.png")
    return result, summary


def train_run_dir(run_path: Path, sft: SFTConfig, home: str | None) -> dict[str, Any] | None:
    """The sft stage's training on a curated run directory, alone or as one of the processes of a launch.

    What `sftjudge train RUN_DIR` runs (`accelerate launch --multi_gpu --num_processes N -m sftjudge.cli train
    RUN_DIR`). Writes checkpoints/, metrics.jsonl, sft.json and loss_curve.png from the main process and leaves
    the manifest to the sft stage. Returns sft.json's content on the main process, None on the others. Raises
    FileNotFoundError when the run has no curated data.
    """
    from sftjudge.models import resolve_model, sftjudge_home

    run = RunDir(Path(run_path))
    for split in ("train", "val", "test"):
        if not (run / f"data/{split}.jsonl").is_file():
            raise FileNotFoundError(f"{run / f'data/{split}.jsonl'} does not exist: the run's curate stage has not "
                                    f"finished; run the cycle (`sftjudge run`) or point at a curated run directory")
    ranks = current()
    with ranks.main_first():  # an embedded model is assembled on first use: once, not by N processes at once
        base_path = resolve_model(sft.base_model, sftjudge_home(home))
    _, summary = fine_tune(run, sft, base_path)
    # Not in a `finally`: a failed rank must exit (the launcher then stops the others), not wait at a barrier.
    ranks.finish()
    return summary if ranks.is_main else None


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


def fine_tune_launched(run: RunDir, sft: SFTConfig, home: str | None, threads: int | None = None) -> dict[str, Any]:
    """Train as sft.num_processes data-parallel processes under `accelerate launch`; return their sft.json.

    Their output goes to stderr and is appended to the run's sft_launch.log. On out-of-memory the launch is
    repeated with half the batch and twice the gradient accumulation (training resumes from the last complete
    epoch), as in-process training does. Raises RuntimeError with the end of the log when the launch fails.
    """
    def attempt(batch_size: int) -> dict[str, Any]:
        accum = sft.grad_accum * max(1, sft.batch_size // batch_size)
        settings = sft.model_copy(update={"batch_size": batch_size, "grad_accum": accum})
        (run / "sft.json").unlink(missing_ok=True)  # a stale summary must not pass for this launch's result
        _run_logged(launch_command(run.path, settings, home, port=_free_port(), threads=threads),
                    run / "sft_launch.log")
        return json.loads((run / "sft.json").read_text())

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
