"""SIGKILL during training, generation and judging: a rerun resumes where the killed process stopped and ends
with the results an uninterrupted run gets.

Each test clones a finished tiny run, resets one stage, runs that stage in a child process that kills itself
with SIGKILL at a chosen point (for generation and judging: half-way through writing a line), then reruns the
stage in this process and compares with a run that was never interrupted.
"""

from __future__ import annotations

import json

import pytest

from .faultkit import clone_run, run_killed
from sftjudge import stages
from sftjudge.config import load_config
from sftjudge.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.model

# Dies right after the epoch-1 checkpoint is on disk, before anything else of the epoch is recorded.
SFT_KILL = """
import os, signal
import sftjudge.sft as sft
from sftjudge import stages
from sftjudge.config import load_config

real_save = sft.save_checkpoint

def save_then_die(*args, epoch, **kwargs):
    out = real_save(*args, epoch=epoch, **kwargs)
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

sft.save_checkpoint = save_then_die
stages.sft_stage({run!r}, load_config({run!r} + "/config.yaml").sft, None)
"""

# `cls.{method}` appends finished records; the second call writes half of its first line, then the process dies.
TORN_WRITE_KILL = """
import json, os, signal
from {module} import {cls} as Cache
from sftjudge import stages
from sftjudge.config import load_config

real = Cache.{method}
calls = []

def write_half_then_die(self, records):
    calls.append(len(records))
    if len(calls) == 2:
        line = json.dumps(records[0]) + "\\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line[: len(line) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, records)

Cache.{method} = write_half_then_die
config = load_config({run!r} + "/config.yaml")
{call}
"""


def test_sigkill_during_training_resumes_from_last_epoch_and_matches(base_run, tmp_path):
    run_path = clone_run(base_run, tmp_path, "killed-sft", reset=("sft", "generate", "judge"))
    run_killed(SFT_KILL.format(run=str(run_path)))
    run = RunDir(run_path)
    assert run.stage_info("sft")["status"] == "running"  # the manifest says what the kill left behind
    assert sorted(p.name for p in (run_path / "checkpoints").iterdir()) == ["epoch-1"]

    config = load_config(run_path / "config.yaml")
    info = stages.sft_stage(str(run_path), config.sft, None)
    assert info["status"] == "completed" and info["attempts"] == 2
    assert info["counts"]["resumed_from_epoch"] == 1
    resumed = read_jsonl(run_path / "metrics.jsonl")
    straight = read_jsonl(base_run / "metrics.jsonl")  # the base run is the same config, never interrupted
    assert [m["epoch"] for m in resumed] == [1, 2]  # no epoch lost, none logged twice
    for a, b in zip(resumed, straight):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


class Counting:
    """Wraps a method on a class to record how many items it was asked to handle."""

    def __init__(self, monkeypatch, cls, name):
        self.items: list = []
        real = getattr(cls, name)

        def counted(obj, items, *args, **kwargs):
            self.items.extend(items)
            return real(obj, items, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)


ANSWER_FIELDS = ("id", "prompt", "text", "completion_tokens", "finish_reason", "model_fingerprint")


def test_sigkill_during_generation_resumes_and_matches(base_run, tmp_path, monkeypatch):
    from sftjudge.generate import TransformersGenerator

    config = load_config(base_run / "config.yaml")
    gen = config.generate.model_copy(update={"batch_size": 2})  # 6 test items: three chunks of two
    killed = clone_run(base_run, tmp_path / "a", "r1", reset=("generate", "judge"))
    straight = clone_run(base_run, tmp_path / "b", "r1", reset=("generate", "judge"))
    call = f"stages.generate_stage({str(killed)!r}, config.generate.model_copy(update={{'batch_size': 2}}), " \
           f"config.sft, None)"
    run_killed(TORN_WRITE_KILL.format(module="sftjudge.generate_cache", cls="GenerationCache", method="append",
                                      run=str(killed), call=call))
    text = (killed / "generations.jsonl").read_text()
    assert text.count("\n") == 2 and not text.endswith("\n")  # first chunk whole, then a torn line

    counter = Counting(monkeypatch, TransformersGenerator, "generate")
    counts = stages.generate_stage(str(killed), gen, config.sft, None)["counts"]
    assert (counts["generated"], counts["reused"], counts["cache_dropped_lines"]) == (4, 2, 1)
    assert len(counter.items) == 4  # only what the killed process had not finished
    monkeypatch.undo()
    stages.generate_stage(str(straight), gen, config.sft, None)
    got, want = read_jsonl(killed / "generations.jsonl"), read_jsonl(straight / "generations.jsonl")
    assert [{k: g[k] for k in ANSWER_FIELDS} for g in got] == [{k: g[k] for k in ANSWER_FIELDS} for g in want]
    assert [g["id"] for g in got] == [r["id"] for r in read_jsonl(killed / "data/test.jsonl")]


def test_sigkill_during_judging_resumes_and_matches(base_run, tmp_path, monkeypatch):
    from sftjudge.judge import LogprobJudge

    config = load_config(base_run / "config.yaml")
    judge = config.judge.model_copy(update={"batch_size": 1})  # judged and appended in chunks of 4 items

    def judge_stage(path):
        return stages.judge_stage(str(path), judge, None, precision="fp32", runs_dir=None, noise_items=0)

    killed = clone_run(base_run, tmp_path / "a", "r1", reset=("judge",))
    straight = clone_run(base_run, tmp_path / "b", "r1", reset=("judge",))
    call = (f"stages.judge_stage({str(killed)!r}, config.judge.model_copy(update={{'batch_size': 1}}), None, "
            f"precision='fp32', runs_dir=None, noise_items=0)")
    run_killed(TORN_WRITE_KILL.format(module="sftjudge.judging", cls="JudgmentCache", method="append",
                                      run=str(killed), call=call))
    assert not (killed / "judgments.jsonl").exists()  # nothing half-done is presented as a result
    text = (killed / "judgments.cache.jsonl").read_text()
    assert text.count("\n") == 4 and not text.endswith("\n")

    counter = Counting(monkeypatch, LogprobJudge, "score")
    info = judge_stage(killed)
    assert len(counter.items) == 2 and info["attempts"] == 2  # the 4 finished judgments were kept
    assert RunDir(killed).stage_info("judge")["counts"]["items"] == 6
    assert json.loads((killed / "metrics.json").read_text())["cache_torn_lines"] == 1
    got = read_jsonl(killed / "judgments.jsonl")
    monkeypatch.undo()
    judge_stage(straight)
    want = read_jsonl(straight / "judgments.jsonl")
    assert [(j["id"], j["score"], j["distribution"]) for j in got] == \
           [(j["id"], j["score"], j["distribution"]) for j in want]

    # The torn line cost one re-judgment, once: a further rerun finds every judgment in the cache.
    RunDir(killed)._set_stage("judge", {"status": "failed"})
    again = Counting(monkeypatch, LogprobJudge, "score")
    judge_stage(killed)
    assert again.items == []
