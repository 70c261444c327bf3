"""Approval in the Prefect UI, end to end on a real Prefect server on 127.0.0.1: a deployment run with
decide.require_approval pauses at the promotion; the answer is given through the API (as the UI's Resume form does);
approve promotes, reject holds with the note as the reason.

The deployment resumes a run directory whose first four stages are done (built once here with the tiny model), so
only decide and the approval run on the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from faults.faultkit import clone_run
from test_deploy_e2e import DEPLOY, PREFECT, REPO, prefect_server, run  # noqa: F401 - prefect_server is a fixture

from sftjudge.run import files
from sftjudge.run.registry import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.flow]

STATE = """
import sys
from prefect import get_client
with get_client(sync_client=True) as client:
    flow_run = client.read_flow_run(sys.argv[1])
    print(flow_run.state.type.value)
"""
ANSWER = """
import json, sys
from prefect.flow_runs import resume_flow_run
resume_flow_run(sys.argv[1], run_input=json.loads(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory, sftjudge_home):
    """A run directory with curate, sft, generate and judge completed on the tiny model (decide pending)."""
    import torch
    from faults.faultkit import fault_config, tiny_rows

    from sftjudge.curate.stage import curate_stage
    from sftjudge.generate.stage import generate_stage
    from sftjudge.judge.stage import judge_stage
    from sftjudge.run.stage import start_run
    from sftjudge.train.stage import sft_stage

    where = tmp_path_factory.mktemp("approval-base")
    data = where / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    config = fault_config(where / "runs", data)
    threads = torch.get_num_threads()
    try:
        path = start_run(config, run_id="judged")
        for stage in (curate_stage, sft_stage, generate_stage, judge_stage):
            stage(path, config)
    finally:
        torch.set_num_threads(threads)
    return config, where / "runs" / "judged"


@pytest.fixture(scope="module")
def deployed(prefect_server):  # noqa: F811 - the fixture imported above
    env = prefect_server["env"] | {"SFTJUDGE_INJECT_FAULT": ""}
    run([PREFECT, "work-pool", "create", "e2e-pool", "--type", "process"], env)
    run([sys.executable, "-c", DEPLOY.format(repo=str(REPO))], env)
    log = open(prefect_server["home"] / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "e2e-pool", "--limit", "1"], env=env,
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prefect_server["procs"].append(worker)
    return env


def start_paused_run(env, judged_run, tmp_path, name):
    config, base = judged_run
    runs = tmp_path / "runs"
    path = clone_run(base, runs, name)
    config = config.model_copy(update={"runs_dir": str(runs), "decide": config.decide.model_copy(
        update={"require_approval": True, "approval_timeout_s": 300})})
    params = json.dumps({"config": config.model_dump(mode="json"), "resume": str(path)})
    started = run([PREFECT, "deployment", "run", "fine-tune-then-judge/e2e", "--params", params], env)
    flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
    deadline = time.time() + 240
    while time.time() < deadline:
        state = run([sys.executable, "-c", STATE, flow_run_id], env).stdout.strip()
        if state == "PAUSED":
            return flow_run_id, runs, path
        assert state not in ("FAILED", "CRASHED", "COMPLETED"), f"flow run ended {state} instead of pausing"
        time.sleep(2)
    raise AssertionError("the flow run never paused for approval")


def finish(env, flow_run_id, answer):
    run([sys.executable, "-c", ANSWER, flow_run_id, json.dumps(answer)], env)
    deadline = time.time() + 180
    while time.time() < deadline:
        state = run([sys.executable, "-c", STATE, flow_run_id], env).stdout.strip()
        if state in ("COMPLETED", "FAILED", "CRASHED"):
            return state
        time.sleep(2)
    raise AssertionError("the flow run did not finish after the answer")


def test_approve_in_the_ui_promotes(deployed, judged_run, tmp_path):
    flow_run_id, runs, path = start_paused_run(deployed, judged_run, tmp_path, "approved")
    assert json.loads((path / files.DECISION).read_text())["action"] == "awaiting_approval"
    assert Registry.in_runs_dir(runs).champion() is None
    assert finish(deployed, flow_run_id, {"approve": True, "note": "checked the report"}) == "COMPLETED"
    decision = json.loads((path / files.DECISION).read_text())
    assert decision["action"] == "promote" and decision["reasons"][0] == "approved by a person: checked the report"
    assert Registry.in_runs_dir(runs).champion()["run_id"] == "approved"


def test_reject_in_the_ui_holds_with_the_note(deployed, judged_run, tmp_path):
    flow_run_id, runs, path = start_paused_run(deployed, judged_run, tmp_path, "rejected")
    assert finish(deployed, flow_run_id, {"approve": False, "note": "answers too terse"}) == "COMPLETED"
    decision = json.loads((path / files.DECISION).read_text())
    assert decision["action"] == "hold" and decision["reasons"][0] == "rejected by a person: answers too terse"
    assert Registry.in_runs_dir(runs).champion() is None
