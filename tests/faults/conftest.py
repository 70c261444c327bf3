"""Fixtures for the fault suite: tiny data, and one real run directory built once and cloned per test.

The base run goes through curate → sft → generate → judge with the library stage functions (no Prefect) on the
tiny model and 60 rows; a test clones it (faultkit.clone_run), resets the stages it wants to break, and runs
them again. tests/faults is a package so that this conftest does not shadow tests/conftest.py, which other
test modules import as `conftest`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .faultkit import fault_config, tiny_rows


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault-data") / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model is far too small to gain from threads; on a shared 2-core machine they cost 5x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, sftjudge_home, tiny_model_dir, tiny_data) -> Path:
    """A run with curate, sft, generate and judge completed (decide pending); clone it, never change it."""
    import torch

    from sftjudge.curate.stage import curate_stage
    from sftjudge.generate.stage import generate_stage
    from sftjudge.judge.stage import judge_stage
    from sftjudge.run.stage import start_run
    from sftjudge.train.stage import sft_stage

    runs_dir = tmp_path_factory.mktemp("fault-base-runs")
    config = fault_config(runs_dir, tiny_data)
    threads = torch.get_num_threads()
    try:
        run = start_run(config, run_id="base")
        for stage in (curate_stage, sft_stage, generate_stage, judge_stage):
            stage(run, config)  # config.threads is 1
    finally:
        torch.set_num_threads(threads)
    return Path(run)
