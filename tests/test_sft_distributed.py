"""Data-parallel SFT for real: two processes under `accelerate launch` (gloo on CPU) against one process.

The sharding keeps the single-process global batch (each rank takes half of every batch and divides its summed
loss by the whole batch's token count), so both runs take the same optimizer steps and measure the same losses;
only float32 summation order differs (per-rank padding, a two-term all-reduce of the gradient, shards scored
separately in evaluation). Measured on this data: at most 3e-7 relative apart over three epochs. REL = 3e-5 is
100x that noise and still 10x below the smallest error a wrong reduction makes here - evaluation as the mean of
the ranks' means: 4e-4 to 1.6e-3; per-rank means in training: 3e-3 to 1.5e-2; the main rank's shard only: 7e-4
to 6e-3. A rank training on the whole batch doubles target_tokens, compared exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import example

from sftjudge.config import RunConfig, SFTConfig
from sftjudge.config_yaml import dump_config
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_jsonl, write_jsonl
from sftjudge.train.stage import sft_stage

pytestmark = pytest.mark.model

REL = 3e-5
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rows(n: int, offset: int = 0):
    # Rows unlike each other - answers of 2 to ~40 tokens, easy and hard - so a mean weighted the wrong way (per
    # rank, per row) is visibly off. 13 train rows in batches of 2 leave a last batch of one row: an empty shard.
    def answer(i: int) -> str:
        digits = " ".join(str((i * 7 + k * 3) % 10) for k in range(2 + 3 * (i % 8)))
        return ['{"intent": "bug_report"}', "ok", digits][i % 3]

    return [example(offset + i, f"Ticket {i}: my router " + "is very " * (i % 5) + "broken", answer(i))
            for i in range(n)]


def _sft(tiny_model_dir: Path, num_processes: int, epochs: int = 3) -> SFTConfig:
    # lr 1e-2: the trainer steps on the token-weighted mean over each accumulated batch; at 3e-2 it overshoots here
    return SFTConfig(base_model=str(tiny_model_dir), epochs=epochs, learning_rate=1e-2, warmup_ratio=0.0,
                     batch_size=2, grad_accum=2, max_seq_len=96, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                     target_modules=ALL_MODULES, precision="fp32", keep_checkpoints="all",
                     num_processes=num_processes)


def _new_run(runs_dir: Path, name: str, sft: SFTConfig, splits: dict | None = None) -> Path:
    """A run directory as the curate stage leaves it: config.yaml, manifest and the three splits."""
    run = RunDir.create(runs_dir, dump_config(RunConfig(name=name, runs_dir=str(runs_dir), sft=sft)), name,
                        run_id=name)
    splits = splits or {"train": _rows(13), "val": _rows(5, 100), "test": _rows(3, 200)}
    for split, rows in splits.items():
        write_jsonl(run / f"data/{split}.jsonl", [r.to_json() for r in rows])
    return run.path


def _sft_stage_here(run: Path, sft: SFTConfig) -> dict:
    """The sft stage in this process on one torch thread (the machine's other core runs the other tests)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return sft_stage(str(run), RunConfig(sft=sft, threads=1))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The reference: one process, three epochs, every checkpoint kept."""
    run = _new_run(tmp_path_factory.mktemp("ddp-runs"), "single", _sft(tiny_model_dir, 1))
    _sft_stage_here(run, _sft(tiny_model_dir, 1))
    return run


# `sftjudge train RUN_DIR`, with every checkpoint save recorded by the rank that made it.
WRITER_SCRIPT = """
import os, sys
import sftjudge.train.loop as loop
from sftjudge.cli import main

real_publish = loop.publish_checkpoint

def recorded_publish(staged, out, meta, **kwargs):
    with open(sys.argv[2], "a", encoding="utf-8") as log:
        log.write(f"rank {os.environ['RANK']} epoch {meta['epoch']}\\n")
    return real_publish(staged, out, meta, **kwargs)

loop.publish_checkpoint = recorded_publish
sys.exit(main(["train", sys.argv[1]]))
"""


def _launch_train(run: Path, tmp_path: Path) -> list[str]:
    """`accelerate launch` two processes of `sftjudge train RUN`; return the checkpoint saves as 'rank R epoch E'.

    The timeout turns a rank left waiting in a collective the others never join into a failure, not a hang.
    """
    from sftjudge.train.launch import _free_port

    script, writes = tmp_path / "train.py", tmp_path / "writes.txt"
    script.write_text(WRITER_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(_free_port()), str(script), str(run), str(writes)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return writes.read_text().splitlines()


def _assert_same_epochs(got: list[dict], want: list[dict]) -> None:
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want]
    for a, b in zip(got, want):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=REL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=REL)
        assert a["step_losses"] == pytest.approx(b["step_losses"], rel=REL, abs=1e-5)  # logged rounded to 1e-5
        assert (a["steps"], a["target_tokens"]) == (b["steps"], b["target_tokens"])  # every row once, not per rank


def test_two_processes_record_the_single_process_losses(single_run, tiny_model_dir, tmp_path):
    run = _new_run(tmp_path, "multi", _sft(tiny_model_dir, 2))
    # num_processes: 2 makes the stage run `accelerate launch --multi_gpu --num_processes 2 -m sftjudge.cli train`.
    info = sft_stage(str(run), RunConfig(sft=_sft(tiny_model_dir, 2)))

    assert info["status"] == "completed" and info["counts"]["num_processes"] == 2
    multi, single = read_jsonl(run / files.EPOCH_METRICS), read_jsonl(single_run / files.EPOCH_METRICS)
    assert [m["epoch"] for m in multi] == [1, 2, 3]  # train and val loss recorded for every epoch, each once
    assert single[-1]["train_loss"] < single[0]["train_loss"] - 0.05  # a run that learned, not a flat line
    _assert_same_epochs(multi, single)
    summary, reference = (json.loads((r / files.SFT_SUMMARY).read_text()) for r in (run, single_run))
    assert summary["best_epoch"] == reference["best_epoch"]
    assert summary["test_loss"] == pytest.approx(reference["test_loss"], rel=REL)
    # one set of checkpoints, no half-written leftovers; one process reported a result
    assert sorted(p.name for p in (run / files.CHECKPOINTS).iterdir()) == ["epoch-1", "epoch-2", "epoch-3"]
    assert (run / files.SFT_LAUNCH_LOG).read_text().count("best epoch 3 of 3 on 2 process(es)") == 1


def test_two_processes_resume_a_checkpoint_and_only_rank_0_writes(single_run, tiny_model_dir, tmp_path):
    run = _new_run(tmp_path, "resumed", _sft(tiny_model_dir, 2))
    # Epochs 1-2 of the single-process run on disk: both ranks must load epoch 2 and train epoch 3 only.
    for epoch in (1, 2):
        shutil.copytree(single_run / f"checkpoints/epoch-{epoch}", run / f"checkpoints/epoch-{epoch}")

    assert _launch_train(run, tmp_path) == ["rank 0 epoch 3"]
    summary = json.loads((run / files.SFT_SUMMARY).read_text())
    assert summary["resumed_from_epoch"] == 2 and summary["num_processes"] == 2
    _assert_same_epochs(read_jsonl(run / files.EPOCH_METRICS), read_jsonl(single_run / files.EPOCH_METRICS))


def test_early_stopping_stops_every_rank_at_the_same_epoch(tiny_model_dir, tmp_path):
    # Train on one pattern, validate on another: val loss rises after the first epoch.
    splits = {"train": [example(i, f"router broken {i}", '{"intent": "bug_report"}') for i in range(16)],
              "val": [example(100 + i, f"refund speaker {i}", "9 8 7 6 5 4 3 2 1") for i in range(5)],
              "test": [example(200, "refund speaker", "9 8 7")]}
    sft = _sft(tiny_model_dir, 1, epochs=8).model_copy(update={"batch_size": 4, "grad_accum": 1,
                                                               "early_stopping_patience": 2,
                                                               "keep_checkpoints": "best_and_last"})
    single = _new_run(tmp_path, "single", sft, splits)
    _sft_stage_here(single, sft)
    multi = _new_run(tmp_path, "multi", sft.model_copy(update={"num_processes": 2}), splits)

    saves = _launch_train(multi, tmp_path)
    got, want = (json.loads((r / files.SFT_SUMMARY).read_text()) for r in (multi, single))
    assert want["stopped_early"] and len(want["epochs"]) < 8
    assert got["stopped_early"] and got["best_epoch"] == want["best_epoch"]
    _assert_same_epochs(got["epochs"], want["epochs"])
    assert saves == [f"rank 0 epoch {m['epoch']}" for m in want["epochs"]]
    kept = sorted(p.name for p in (multi / files.CHECKPOINTS).iterdir())
    assert kept == sorted({f"epoch-{want['best_epoch']}", f"epoch-{len(want['epochs'])}"})


def test_train_refuses_a_run_directory_that_was_not_curated(tmp_path, tiny_model_dir, capsys):
    from sftjudge.cli import main

    run = RunDir.create(tmp_path, dump_config(RunConfig(sft=_sft(tiny_model_dir, 1))), "raw", run_id="raw")
    assert main(["train", str(run.path)]) == 2
    assert "data/train.jsonl does not exist" in capsys.readouterr().err


def test_launch_command_carries_the_stage_settings(tmp_path, tiny_model_dir):
    from sftjudge.config_yaml import load_config
    from sftjudge.train.launch import launch_command

    sft = _sft(tiny_model_dir, 4).model_copy(update={"batch_size": 1, "grad_accum": 4})  # an OOM retry's settings
    command = launch_command(tmp_path / "run", sft, "/models", port=29611, threads=8)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--num_cpu_threads_per_process") + 1] == "2"
    train_args = command[command.index("-m", 3) + 1:]
    assert train_args[:3] == ["sftjudge.cli", "train", str(tmp_path / "run")]
    # what `sftjudge train` does with the overrides: the processes see exactly these settings
    config = load_config(None, train_args[3:])
    assert config.sft == sft and config.home == "/models"


def test_out_of_memory_relaunches_with_half_the_batch(tmp_path, tiny_model_dir, monkeypatch):
    from sftjudge.config_yaml import load_config
    from sftjudge.train import launch

    launched = []

    def fake_launch(command, log):
        sft = load_config(None, command[command.index("train") + 2:]).sft
        launched.append((sft.batch_size, sft.grad_accum))
        if len(launched) == 1:
            raise RuntimeError("... torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        (tmp_path / files.SFT_SUMMARY).write_text('{"batch_size": 1}')

    monkeypatch.setattr(launch, "_run_logged", fake_launch)
    summary = launch.fine_tune_launched(RunDir(tmp_path), RunConfig(sft=_sft(tiny_model_dir, 2)))
    assert launched == [(2, 2), (1, 4)] and summary == {"batch_size": 1}  # same effective batch
