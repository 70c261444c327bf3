"""A judge is its definition and its model: an edited prompt makes a new judge, whose scores are not compared
with the old one's, and whose calibration starts from nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.decide.stage import decide_stage
from sftjudge.judge.calibrate import save_calibration
from sftjudge.judge.model import LoadedJudge
from sftjudge.judge.spec import load_judge
from sftjudge.judge.stage import judge_stage
from sftjudge.models.embedded import sftjudge_home
from sftjudge.run import files

from .faultkit import REPO, clone_run


def metrics(run) -> dict:
    return json.loads((run / files.METRICS).read_text())


@pytest.fixture
def calibrated(base_run, tmp_path):
    """The base run's judge with a stored calibration (removed afterwards: the model cache is the session's)."""
    judges = tmp_path / "judges"
    shutil.copytree(REPO / "judges", judges)
    config = load_config(base_run / files.CONFIG, [f"runs_dir={tmp_path / 'runs'}", f"judge.judges_dir={judges}"])
    home = sftjudge_home(config.home)
    identity = LoadedJudge(config, home).identity(load_judge(judges, config.judge.judge))
    stored = save_calibration(home, identity, {"kind": "pointwise", "file": "labels.jsonl", "at": "2026-12-02",
                                               "items": 20, "spearman": 0.9})
    yield config, identity
    stored.unlink()


def test_editing_the_judge_prompt_holds_the_next_run_and_hides_the_old_calibration(base_run, calibrated):
    config, identity = calibrated
    runs, judges = Path(config.runs_dir), Path(config.judge.judges_dir)

    champion = clone_run(base_run, runs, "champion", reset=("judge", "decide"))
    judge_stage(str(champion), config)
    assert metrics(champion)["judge"] == identity
    assert metrics(champion)["calibration"]["pointwise"]["items"] == 20
    assert decide_stage(str(champion), config)["counts"]["action"] == "promote"

    same = clone_run(base_run, runs, "same-judge", reset=("judge", "decide"))
    judge_stage(str(same), config)
    assert metrics(same)["judge"] == identity  # same definition and model: the same judge, run after run
    decide_stage(str(same), config)
    assert not any("not comparable" in r for r in json.loads((same / files.DECISION).read_text())["reasons"])

    prompt = judges / config.judge.judge / load_judge(judges, config.judge.judge).prompt_file
    prompt.write_text(prompt.read_text() + "\nBe strict.\n")
    edited = clone_run(base_run, runs, "edited-judge", reset=("judge", "decide"))
    judge_stage(str(edited), config)
    assert metrics(edited)["judge"] != identity
    assert metrics(edited)["judge"].split("#")[0] == identity.split("#")[0]  # same name and model, new definition
    assert metrics(edited)["calibration"] == {}  # the old judge's calibration says nothing about this one

    assert decide_stage(str(edited), config)["counts"]["action"] == "hold"
    reasons = json.loads((edited / files.DECISION).read_text())["reasons"]
    assert f"not comparable: judged by {metrics(edited)['judge']}, the champion by {identity}" in reasons
