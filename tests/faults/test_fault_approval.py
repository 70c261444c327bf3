"""decide.require_approval without a server: a promotion waits (champion untouched), then approve promotes, reject
or silence holds with the reason, and a champion that moved meanwhile is never overwritten."""

from __future__ import annotations

import json

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.decide.approval import AWAITING, Approval, apply_answer
from sftjudge.decide.stage import decide_stage
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.registry import Registry

from .faultkit import clone_run


@pytest.fixture
def waiting(base_run, tmp_path):
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "waiting", reset=("decide",))
    config = load_config(run_path / files.CONFIG, [f"runs_dir={runs}", "decide.require_approval=true",
                                                   "decide.approval_timeout_s=60"])
    assert decide_stage(str(run_path), config)["counts"]["action"] == AWAITING
    assert Registry.in_runs_dir(runs).champion() is None  # nothing moved before a person answers
    assert "waits for a person" in (run_path / files.REPORT).read_text()
    return RunDir(run_path), config, runs


def test_approve_promotes_with_the_note_as_reason(waiting):
    run, config, runs = waiting
    decision = apply_answer(run, config, Approval(approve=True, note="read 20 answers, all fine"))
    assert decision["action"] == "promote" and decision["reasons"][0] == "approved by a person: read 20 answers, all fine"
    registry = Registry.in_runs_dir(runs)
    assert registry.champion()["run_id"] == "waiting"
    assert registry.champion_history()[-1]["how"] == "approval"
    assert "approved by a person" in (run.path / files.REPORT).read_text()
    assert apply_answer(run, config, Approval(approve=False)) == decision  # a retried task changes nothing


@pytest.mark.parametrize("answer, reason", [(Approval(approve=False, note="tone is off"),
                                             "rejected by a person: tone is off"),
                                            (Approval(approve=False), "rejected by a person (no note given)"),
                                            (None, "no approval within 60 s (decide.approval_timeout_s)")])
def test_reject_or_silence_holds(waiting, answer, reason):
    run, config, runs = waiting
    decision = apply_answer(run, config, answer)
    assert decision["action"] == "hold" and decision["reasons"][0] == reason
    # under HOLD no reason may still read "becomes the champion" as if it had happened (issue 26)
    assert all(r.startswith("the rules alone would have promoted it: ") for r in decision["reasons"][1:])
    assert decision["reasons"][1:] and "becomes the champion" in " ".join(decision["reasons"][1:])
    assert Registry.in_runs_dir(runs).champion() is None
    assert json.loads((run.path / files.DECISION).read_text())["action"] == "hold"
    assert Registry.in_runs_dir(runs).get("waiting")["decision"] == "hold"


def test_an_approval_never_overwrites_a_champion_promoted_meanwhile(waiting, base_run):
    run, config, runs = waiting
    other = clone_run(base_run, runs, "other", reset=())
    Registry.in_runs_dir(runs).record({"run_id": "other", "run_dir": str(other)}, promote=True)
    decision = apply_answer(run, config, Approval(approve=True))
    assert decision["action"] == "hold" and decision["reasons"][0].startswith("approved, but not promoted")
    assert Registry.in_runs_dir(runs).champion()["run_id"] == "other"
