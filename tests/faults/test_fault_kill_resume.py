"""SIGKILL during training, generation and judging: a rerun resumes where the killed process stopped and ends
with the results an uninterrupted run gets.

Each test clones a finished tiny run, resets one stage, runs that stage in a child process that kills itself
with SIGKILL at a chosen point (for generation and judging: half-way through writing a line), then reruns the
stage in this process and compares with a run that was never interrupted.
"""

from __future__ import annotations

import json

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.generate.stage import generate_stage
from sftjudge.judge.stage import judge_stage
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_jsonl
from sftjudge.train.stage import sft_stage

from .faultkit import clone_run, run_killed

pytestmark = pytest.mark.model

# Dies right after the epoch-1 checkpoint is on disk, before anything else of the epoch is recorded.
SFT_KILL = """
import os, signal
import sftjudge.train.loop as loop
from sftjudge.config_yaml import load_config
from sftjudge.train.stage import sft_stage

real_publish = loop.publish_checkpoint

def publish_then_die(staged, out, meta, **kwargs):
    saved = real_publish(staged, out, meta, **kwargs)
    if meta["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return saved

loop.publish_checkpoint = publish_then_die
sft_stage({run!r}, load_config({run!r} + "/config.yaml"))
"""

# `cls.{method}` appends finished records; the second call writes half of its first line, then the process dies.
TORN_WRITE_KILL = """
import json, os, signal
from {module} import {cls} as Cache
from sftjudge.config_yaml import load_config
from sftjudge.generate.stage import generate_stage
from sftjudge.judge.stage import judge_stage

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
    assert sorted(p.name for p in (run_path / files.CHECKPOINTS).iterdir()) == ["epoch-1"]

    config = load_config(run_path / files.CONFIG)
    info = sft_stage(str(run_path), config)
    assert info["status"] == "completed" and info["attempts"] == 2
    assert info["counts"]["resumed_from_epoch"] == 1
    resumed = read_jsonl(run_path / files.EPOCH_METRICS)
    straight = read_jsonl(base_run / files.EPOCH_METRICS)  # the base run is the same config, never interrupted
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
    from sftjudge.generate.backends import TransformersGenerator

    config = load_config(base_run / files.CONFIG, ["generate.batch_size=2"])  # 6 test items: three chunks of two
    killed = clone_run(base_run, tmp_path / "a", "r1", reset=("generate", "judge"))
    straight = clone_run(base_run, tmp_path / "b", "r1", reset=("generate", "judge"))
    call = f"generate_stage({str(killed)!r}, config.model_copy(update={{'generate': config.generate.model_copy(" \
           f"update={{'batch_size': 2}})}}))"
    run_killed(TORN_WRITE_KILL.format(module="sftjudge.generate.cache", cls="GenerationCache", method="append",
                                      run=str(killed), call=call))
    text = (killed / files.GENERATIONS).read_text()
    assert text.count("\n") == 2 and not text.endswith("\n")  # first chunk whole, then a torn line

    counter = Counting(monkeypatch, TransformersGenerator, "generate")
    counts = generate_stage(str(killed), config)["counts"]
    assert (counts["generated"], counts["reused"], counts["cache_dropped_lines"]) == (4, 2, 1)
    assert len(counter.items) == 4  # only what the killed process had not finished
    monkeypatch.undo()
    generate_stage(str(straight), config)
    got, want = read_jsonl(killed / files.GENERATIONS), read_jsonl(straight / files.GENERATIONS)
    assert [{k: g[k] for k in ANSWER_FIELDS} for g in got] == [{k: g[k] for k in ANSWER_FIELDS} for g in want]
    assert [g["id"] for g in got] == [r["id"] for r in read_jsonl(killed / files.TEST)]


def test_sigkill_during_judging_resumes_and_matches(base_run, tmp_path, monkeypatch):
    from sftjudge.judge.logprob import LogprobJudge

    # Judged and appended in chunks of 4 items; fp32 as the base run; no champion.
    config = load_config(base_run / files.CONFIG, ["judge.batch_size=1", f"runs_dir={tmp_path / 'no-champion'}"])

    def judge(path):
        return judge_stage(str(path), config)

    killed = clone_run(base_run, tmp_path / "a", "r1", reset=("judge",))
    straight = clone_run(base_run, tmp_path / "b", "r1", reset=("judge",))
    call = (f"judge_stage({str(killed)!r}, config.model_copy(update={{'judge': config.judge.model_copy(update="
            f"{{'batch_size': 1}}), 'runs_dir': {str(tmp_path / 'no-champion')!r}}}))")
    run_killed(TORN_WRITE_KILL.format(module="sftjudge.judge.cache", cls="JudgmentCache", method="append",
                                      run=str(killed), call=call))
    assert not (killed / files.JUDGMENTS).exists()  # nothing half-done is presented as a result
    text = (killed / files.JUDGMENT_CACHE).read_text()
    assert text.count("\n") == 4 and not text.endswith("\n")

    counter = Counting(monkeypatch, LogprobJudge, "score")
    info = judge(killed)
    assert len(counter.items) == 2 and info["attempts"] == 2  # the 4 finished judgments were kept
    assert RunDir(killed).stage_info("judge")["counts"]["items"] == 6
    assert json.loads((killed / files.METRICS).read_text())["cache_torn_lines"] == 1
    got = read_jsonl(killed / files.JUDGMENTS)
    monkeypatch.undo()
    judge(straight)
    want = read_jsonl(straight / files.JUDGMENTS)
    assert [(j["id"], j["score"], j["distribution"]) for j in got] == \
           [(j["id"], j["score"], j["distribution"]) for j in want]

    # The torn line cost one re-judgment, once: a further rerun finds every judgment in the cache.
    RunDir(killed)._set_stage("judge", {"status": "failed"})
    again = Counting(monkeypatch, LogprobJudge, "score")
    judge(killed)
    assert again.items == []
