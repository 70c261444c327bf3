"""A judge stage that fails still shuts its engine down (issue 25, item 8).

Prefect retries a failed stage in the same process; a vLLM engine the failed attempt left running holds its share
of the card, and the retry's engine then fails vLLM's start-up check of free memory - so one transient error would
become three failures and a lost cycle.
"""

from __future__ import annotations

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.judge.stage import judge_stage
from sftjudge.run import files

from .faultkit import clone_run
from .test_fault_bad_judge import ScriptedJudge


class JudgeThatFails(ScriptedJudge):
    """Loads (stands for an engine started), then fails on first use, and counts how often it was closed."""

    closed = 0

    def scorer(self, spec):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def close(self):
        JudgeThatFails.closed += 1


def test_a_failed_judge_stage_closes_its_engine(base_run, tmp_path, monkeypatch):
    monkeypatch.setattr("sftjudge.judge.stage.LoadedJudge", JudgeThatFails)
    JudgeThatFails.closed = 0
    run_path = clone_run(base_run, tmp_path / "runs", "r1", reset=("judge", "decide"))
    config = load_config(run_path / files.CONFIG, [f"runs_dir={tmp_path / 'runs'}", "judge.anchors=false"])
    with pytest.raises(RuntimeError, match="illegal memory access"):
        judge_stage(str(run_path), config)
    assert JudgeThatFails.closed == 1
