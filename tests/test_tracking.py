"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (SQLite backend), started and stopped by the test:
each cycle one MLflow run with params, per-epoch metrics, judge metrics, decision tags and artifacts; the champion
registered with the `champion` alias; a retry completes the same MLflow run; a dead server never costs the
decision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults.faultkit import fault_config, tiny_rows
from test_deploy_e2e import free_port, wait_healthy

from sftjudge.run import files

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    where = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(where / "server.log", "w")
    proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{where / 'mlflow.db'}",
                             "--artifacts-destination", str(where / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def decided_run(tmp_path_factory, sftjudge_home, tiny_model_dir):
    """A tiny run through every stage, decided (first run of its registry: promoted)."""
    from sftjudge.curate.stage import curate_stage
    from sftjudge.decide.stage import decide_stage
    from sftjudge.generate.stage import generate_stage
    from sftjudge.judge.stage import judge_stage
    from sftjudge.run.stage import start_run
    from sftjudge.train.stage import sft_stage

    runs = tmp_path_factory.mktemp("tracked-runs")
    data = runs / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()), encoding="utf-8")
    config = fault_config(runs, data, "sft.epochs=2")
    run = start_run(config, run_id="tracked")
    for stage in (curate_stage, sft_stage, generate_stage, judge_stage, decide_stage):
        stage(run, config)
    return config, Path(run)


@pytest.mark.model
def test_a_cycle_is_one_mlflow_run_and_the_champion_gets_the_alias(mlflow_server, decided_run):
    from mlflow.tracking import MlflowClient

    from sftjudge.track.mlflow_run import track_run

    config, run = decided_run
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"uri": mlflow_server})})
    decision = json.loads((run / files.DECISION).read_text())
    first = track_run(run, config)
    again = track_run(run, config)  # a retried task: the same MLflow run, no second model version
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    logged = client.get_run(first["mlflow_run_id"])
    assert logged.data.params["sft.epochs"] == "2" and logged.data.params["judge.model"] == "tiny"
    assert len(logged.data.params) > 100  # every setting, past MLflow's 100-per-batch limit
    val = client.get_metric_history(first["mlflow_run_id"], "val_loss")
    sft = json.loads((run / files.SFT_SUMMARY).read_text())
    assert [(m.step, round(m.value, 6)) for m in val] == [(e["epoch"], round(e["val_loss"], 6))
                                                          for e in sft["epochs"]]
    metrics = json.loads((run / files.METRICS).read_text())
    assert logged.data.metrics["judge_score"] == pytest.approx(metrics["judge_score_mean"])
    assert any(k.startswith("dimension.") for k in logged.data.metrics)
    assert logged.data.tags["sftjudge.action"] == decision["action"]
    assert logged.data.tags["sftjudge.reasons"].split("\n")[0] == decision["reasons"][0]
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"])}
    assert {"report.md", "metrics.json", "judgments.jsonl", "decision.json"} <= artifacts
    assert decision["action"] == "promote"
    name = "sftjudge-tiny"
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1 and first["registered_version"] == again["registered_version"] == versions[0].version
    assert client.get_model_version_by_alias(name, "champion").run_id == first["mlflow_run_id"]
    files_in_model = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "model")}
    assert "model/adapter_model.safetensors" in files_in_model


@pytest.mark.model
@pytest.mark.flow
def test_a_dead_tracking_server_is_reported_and_the_decision_stands(decided_run, prefect_harness, tmp_path,
                                                                     monkeypatch):
    import shutil

    from sftjudge.flows.cycle import fine_tune_then_judge
    from sftjudge.run.directory import RunDir

    config, base = decided_run
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)  # what tracking.retries and tracking.timeout_s set must suffice
    copy = tmp_path / "runs" / base.name
    shutil.copytree(base, copy)
    dead = config.model_copy(update={"runs_dir": str(tmp_path / "runs"), "tracking": config.tracking.model_copy(
        update={"uri": f"http://127.0.0.1:{free_port()}", "retries": 1, "retry_delay_s": 0})})
    summary = fine_tune_then_judge(dead, resume=str(copy))
    assert summary["status"] == "completed" and summary["decision"] == "promote"  # the recorded decision
    tracking = RunDir(copy).manifest()["tracking"]
    assert tracking["status"] == "failed" and "127.0.0.1" in tracking["error"]
    assert summary["tracking"] == tracking
    from sftjudge.run.summary import format_summary

    assert "MLflow: NOT logged" in format_summary(summary) and "the decision stands" in format_summary(summary)
