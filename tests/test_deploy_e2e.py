"""End to end through a real Prefect server on loopback: deploy, start a worker, trigger a run, retry a stage.

Starts `prefect server` on 127.0.0.1 and a process worker as child processes (each in its own process group),
and stops every one of them by PID at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.run import files
from sftjudge.run.directory import STAGES, RunDir

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = [pytest.mark.e2e, pytest.mark.flow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"server not healthy at {url} after {seconds}s")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, sftjudge_home):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_API_URL": api, "DO_NOT_TRACK": "1",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SFTJUDGE_HOME": str(sftjudge_home),
                        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
                        "SFTJUDGE_INJECT_FAULT": "judge"}
    procs: list[subprocess.Popen] = []
    log = open(home / "server.log", "w")
    try:
        server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(server)
        wait_healthy(api, server)
        yield {"env": env, "api": api, "home": home, "procs": procs}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        log.close()


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


DEPLOY = """
from sftjudge.flows.cycle import fine_tune_then_judge
fine_tune_then_judge.from_source(source={repo!r}, entrypoint="flows/cycle.py:fine_tune_then_judge").deploy(
    name="e2e", work_pool_name="e2e-pool")
"""


def test_deployment_run_on_a_worker_retries_only_the_failed_stage(prefect_server, tmp_path):
    env = prefect_server["env"]
    run([PREFECT, "work-pool", "create", "e2e-pool", "--type", "process"], env)
    run([sys.executable, "-c", DEPLOY.format(repo=str(REPO))], env)
    worker_log = open(prefect_server["home"] / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "e2e-pool", "--limit", "1"], env=env, cwd=REPO,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    prefect_server["procs"].append(worker)
    runs_dir = tmp_path / "runs"
    config = load_config(REPO / "configs/tiny.yaml", [f"runs_dir={runs_dir}",
                                                     f"data.path={REPO / 'data/sample/support_tickets.jsonl'}",
                                                     f"judge.judges_dir={REPO / 'judges'}"])
    params = json.dumps({"config": config.model_dump(mode="json")})
    done = subprocess.run([PREFECT, "deployment", "run", "fine-tune-then-judge/e2e", "--params", params, "--watch",
                           "--watch-timeout", "600"], env=env, cwd=REPO, capture_output=True, text=True, timeout=700)
    worker_log.flush()
    logs = (prefect_server["home"] / "worker.log").read_text()[-4000:]
    assert done.returncode == 0, f"deployment run failed:\n{done.stdout[-3000:]}\n{logs}"
    [run_dir] = [p for p in runs_dir.iterdir() if (p / files.MANIFEST).is_file()]
    manifest = RunDir(run_dir).manifest()
    assert manifest["status"] == "completed"
    assert [manifest["stages"][s]["status"] for s in STAGES] == ["completed"] * 5
    # The injected fault made judge fail once; its task retry succeeded and nothing before it ran again.
    attempts = {s: manifest["stages"][s]["attempts"] for s in STAGES}
    assert attempts == {"curate": 1, "sft": 1, "generate": 1, "judge": 2, "decide": 1}, attempts
    assert (run_dir / ".fault-injected-judge").exists()


def test_setup_script_and_prefect_yaml_deploy_cleanly(prefect_server):
    env = prefect_server["env"] | {"SFTJUDGE_CHECKOUT": str(REPO)}
    for _ in range(2):  # idempotent: the second run changes nothing and does not fail
        run([sys.executable, "deployments/setup.py", "--gpu-slots", "2", "--runs-per-worker", "2"], env)
    pools = run([PREFECT, "work-pool", "ls"], env).stdout
    assert "cpu" in pools and "gpu" in pools
    for pool in ("cpu", "gpu"):  # every flow run on these pools gets half the worker's cores
        inspected = run([PREFECT, "work-pool", "inspect", pool, "--output", "json"], env).stdout
        template = json.loads(inspected)["base_job_template"]
        assert template["variables"]["properties"]["env"]["default"]["SFTJUDGE_RUNS_PER_WORKER"] == "2"
    limits = run([PREFECT, "global-concurrency-limit", "inspect", "gpu", "--output", "json"], env).stdout
    assert json.loads(limits)["limit"] == 2
    run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    for name in ("gpu-stages/gpu", "fine-tune-then-judge/on-demand", "fine-tune-then-judge/nightly"):
        run([PREFECT, "deployment", "inspect", name], env)  # fails unless the deployment exists
    nightly = run([PREFECT, "deployment", "inspect", "fine-tune-then-judge/nightly"], env).stdout
    assert "0 2 * * *" in nightly


LIST_RUNS = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs()
        out = [{"flow": (await client.read_flow(r.flow_id)).name, "pool": r.work_pool_name,
                "state": r.state.type.value} for r in runs]
    print(json.dumps(out))

asyncio.run(main())
"""

DEPLOY_GPU = """
from sftjudge.flows.cycle import fine_tune_then_judge, gpu_stages
gpu_stages.from_source(source={repo!r}, entrypoint="flows/cycle.py:gpu_stages").deploy(
    name="e2e-gpu", work_pool_name="e2e-gpu-pool")
fine_tune_then_judge.from_source(source={repo!r}, entrypoint="flows/cycle.py:fine_tune_then_judge").deploy(
    name="e2e-routed", work_pool_name="e2e-cpu-pool")
"""


def test_gpu_stages_are_routed_to_their_own_pool_under_the_gpu_limit(prefect_server, tmp_path):
    env = prefect_server["env"] | {"SFTJUDGE_INJECT_FAULT": ""}
    for pool in ("e2e-cpu-pool", "e2e-gpu-pool"):
        run([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
    run([PREFECT, "global-concurrency-limit", "create", "e2e-gpu", "--limit", "1"], env)
    run([sys.executable, "-c", DEPLOY_GPU.format(repo=str(REPO))], env)
    for pool in ("e2e-cpu-pool", "e2e-gpu-pool"):
        log = open(prefect_server["home"] / f"{pool}.log", "w")
        prefect_server["procs"].append(subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--limit", "1"], env=env, cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
    runs_dir = tmp_path / "runs"
    config = load_config(REPO / "configs/tiny.yaml", [
        f"runs_dir={runs_dir}", f"data.path={REPO / 'data/sample/support_tickets.jsonl'}",
        f"judge.judges_dir={REPO / 'judges'}", "orchestration.gpu_deployment=gpu-stages/e2e-gpu",
        "orchestration.gpu_concurrency_limit=e2e-gpu"])
    params = json.dumps({"config": config.model_dump(mode="json")})
    done = subprocess.run([PREFECT, "deployment", "run", "fine-tune-then-judge/e2e-routed", "--params", params,
                           "--watch", "--watch-timeout", "600"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=700)
    gpu_log = (prefect_server["home"] / "e2e-gpu-pool.log").read_text()
    assert done.returncode == 0, f"routed run failed:\n{done.stdout[-3000:]}\n{gpu_log[-3000:]}"
    [run_dir] = [p for p in runs_dir.iterdir() if (p / files.MANIFEST).is_file()]
    assert RunDir(run_dir).manifest()["status"] == "completed"
    # The GPU stages ran as their own flow run on the gpu pool (picked up by its worker), not in-process.
    flow_runs = json.loads(run([sys.executable, "-c", LIST_RUNS], env).stdout)
    assert {"flow": "gpu-stages", "pool": "e2e-gpu-pool", "state": "COMPLETED"} in flow_runs, flow_runs
    assert {"flow": "fine-tune-then-judge", "pool": "e2e-cpu-pool", "state": "COMPLETED"} in flow_runs, flow_runs
