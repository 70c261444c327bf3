"""The thread budget: each flow run takes its share of the worker's cores, from the pool settings."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from sftjudge.config import RunConfig
from sftjudge.run.directory import RunDir
from sftjudge.run.stage import run_stage
from sftjudge.runtime.threads import RUNS_ENV, resolve_threads, runs_per_worker, thread_budget, usable_cores

REPO = Path(__file__).resolve().parent.parent


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of time: two cores, partly
    assert usable_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cores(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")  # unlimited
    assert usable_cores(v1) == affinity


def test_the_budget_shares_the_cores_among_the_runs_of_a_worker():
    assert resolve_threads(None, {RUNS_ENV: "2"}, cores=2) == 1
    assert resolve_threads(None, {RUNS_ENV: "3"}, cores=16) == 5
    assert resolve_threads(None, {}, cores=16) == 16
    assert resolve_threads(4, {RUNS_ENV: "8"}, cores=2) == 4  # threads: in the config wins
    assert thread_budget(2, 5) == 1  # never zero


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_runs_per_worker_says_what_it_must_be(value):
    with pytest.raises(ValueError, match=RUNS_ENV):
        runs_per_worker({RUNS_ENV: value})


def test_every_stage_runs_with_the_budget_and_hands_it_to_child_processes(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv(RUNS_ENV, "2")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    seen = {}

    def work(ctx):
        seen["torch"] = torch.get_num_threads()
        seen["omp"] = os.environ.get("OMP_NUM_THREADS")

    before = torch.get_num_threads()
    try:
        run_stage("curate", run.path, RunConfig(runs_dir=str(tmp_path)), work)
    finally:
        torch.set_num_threads(before)
    expected = max(1, usable_cores() // 2)
    assert seen == {"torch": expected, "omp": str(expected)}


def test_setup_writes_the_runs_per_worker_into_every_pool_template():
    spec = importlib.util.spec_from_file_location("deploy_setup", REPO / "deployments" / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    for pool_type in ("process", "docker", "kubernetes"):
        env = setup.job_template(pool_type, 3)["variables"]["properties"]["env"]["default"]
        assert env[RUNS_ENV] == "3"
        assert env["DO_NOT_TRACK"] == "1"  # the template's own defaults stay
