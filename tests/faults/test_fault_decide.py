"""Crashes around the promotion and two runs finishing at once.

Recording a run and moving the champion pointer is one SQLite transaction; a decision is recorded only against
the champion it was made against; a rerun of decide after a crash gives the same decision, never a second one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.decide.stage import decide_stage
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.registry import Registry

from .faultkit import REPO, TESTS, clone_run, run_killed, set_scores

WORSE = [4.0, 4.2, 3.8, 4.1, 3.9, 4.0]
BETTER = [7.0, 7.2, 6.8, 7.1, 6.9, 7.0]

# Killed inside the registry transaction: after the run's row is inserted, at the champion-pointer write.
KILL_AT_POINTER_WRITE = """
import os, signal
from faults.faultkit import AtPointerWrite
from sftjudge.config_yaml import load_config
from sftjudge.run.registry import Registry
from sftjudge.decide.stage import decide_stage
real_connect = Registry._connect
Registry._connect = lambda self: AtPointerWrite(real_connect(self), lambda: os.kill(os.getpid(), signal.SIGKILL))
decide_stage({run!r}, load_config({run!r} + "/config.yaml", ["runs_dir={runs}"]))
"""


@pytest.fixture
def champion_and_challenger(base_run, tmp_path):
    """Run `a` decided and promoted; run `b`, clearly better on the same test split, not decided yet."""
    runs = tmp_path / "runs"
    a = clone_run(base_run, runs, "a", reset=("decide",))
    b = clone_run(base_run, runs, "b", reset=("decide",))
    set_scores(a, WORSE)
    set_scores(b, BETTER)
    config = load_config(a / files.CONFIG, [f"runs_dir={runs}"])
    assert decide_stage(str(a), config)["counts"]["action"] == "promote"
    return runs, a, b, config


def decision(run: Path) -> dict:
    return json.loads((run / files.DECISION).read_text())


def test_sigkill_between_decision_and_pointer_write_keeps_old_champion(champion_and_challenger):
    runs, a, b, config = champion_and_challenger
    run_killed(KILL_AT_POINTER_WRITE.format(run=str(b), runs=str(runs)))
    registry = Registry.in_runs_dir(runs)
    assert registry.champion()["run_id"] == "a"
    assert registry.get("b") is None  # the row inserted in the killed transaction was rolled back with it
    assert [h["run_id"] for h in registry.champion_history()] == ["a"]
    assert RunDir(b).stage_info("decide")["status"] == "running"

    first = decide_stage(str(b), config)  # the rerun decides again, against the same champion
    assert first["counts"] == {"action": "promote", "champion_before": "a"}
    assert [(h["run_id"], h["previous_run_id"]) for h in registry.champion_history()] == [("a", None), ("b", "a")]
    recorded, row = decision(b), registry.get("b")
    assert decide_stage(str(b), config) == first  # and again: nothing moves
    assert decision(b) == recorded and registry.get("b") == row
    assert len(registry.champion_history()) == 2


def test_crash_after_the_registry_commit_rerun_keeps_the_recorded_decision(champion_and_challenger, monkeypatch):
    runs, a, b, config = champion_and_challenger

    def disk_gone(self, **fields):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # the registry has committed; recording it in the manifest fails
        patch.setattr(RunDir, "update_manifest", disk_gone)
        with pytest.raises(OSError):
            decide_stage(str(b), config)
    registry = Registry.in_runs_dir(runs)
    assert registry.champion()["run_id"] == "b" and RunDir(b).stage_info("decide")["status"] == "failed"
    recorded, row = decision(b), registry.get("b")
    assert recorded["champion_before"] == "a" and recorded["action"] == "promote"

    # b is the champion now: deciding again would compare b with itself (or with nothing). The rerun must
    # return the decision already recorded, not a new one.
    assert decide_stage(str(b), config)["counts"] == {"action": "promote", "champion_before": "a"}
    assert decision(b) == recorded and registry.get("b") == row
    assert [(h["run_id"], h["previous_run_id"]) for h in registry.champion_history()] == [("a", None), ("b", "a")]


# Decides, then waits until the other process has decided too, then records: both decided against `a`.
DECIDE_TOGETHER = """
import time
from pathlib import Path
from sftjudge.config_yaml import load_config
from sftjudge.run.registry import Registry
from sftjudge.decide.stage import decide_stage

barrier = Path({barrier!r})
real_record = Registry.record
waited = []

def record_after_both_decided(self, *args, **kwargs):
    if not waited:
        waited.append(1)
        (barrier / {name!r}).touch()
        deadline = time.time() + 120
        while len(list(barrier.iterdir())) < 2:
            assert time.time() < deadline, "the other process never decided"
            time.sleep(0.02)
    return real_record(self, *args, **kwargs)

Registry.record = record_after_both_decided
decide_stage({run!r}, load_config({run!r} + "/config.yaml", ["runs_dir={runs}"]))
"""


def test_two_runs_finishing_at_once_serialise_and_both_are_recorded(champion_and_challenger, tmp_path):
    runs, a, b, config = champion_and_challenger
    c = clone_run(b, runs, "c")  # as good as b: whichever records second must be compared with the first
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    prelude = f"import sys\nsys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]\n"
    procs = [subprocess.Popen([sys.executable, "-c", prelude + DECIDE_TOGETHER.format(
        barrier=str(barrier), name=run.name, run=str(run), runs=str(runs))], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for run in (b, c)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    registry = Registry.in_runs_dir(runs)
    assert sorted(r["run_id"] for r in registry.runs()) == ["a", "b", "c"]
    history = registry.champion_history()
    assert len(history) == 2, "both runs were promoted over a; the second was never compared with the first"
    winner = history[-1]["run_id"]
    loser = c if winner == "b" else b
    assert history[-1]["previous_run_id"] == "a" and decision(runs / winner)["champion_before"] == "a"
    assert decision(loser)["champion_before"] == winner and decision(loser)["action"] == "hold"
    assert registry.get(loser.name)["decision"] == "hold"
