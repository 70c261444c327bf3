"""The real flow under prefect_test_harness on configs/tiny.yaml; assertions on the run directory."""

import json
from pathlib import Path

import pytest

from sftjudge.cli import main
from sftjudge.config_yaml import load_config
from sftjudge.run import files
from sftjudge.run.directory import STAGES, RunDir
from sftjudge.run.io import read_jsonl
from sftjudge.run.registry import Registry

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.flow, pytest.mark.model]


@pytest.fixture(scope="module")
def two_runs(prefect_harness, sftjudge_home, tmp_path_factory):
    from sftjudge.flows.cycle import fine_tune_then_judge

    runs_dir = tmp_path_factory.mktemp("runs")
    config = load_config(REPO / "configs/tiny.yaml", [f"runs_dir={runs_dir}",
                                                     f"data.path={REPO / 'data/sample/support_tickets.jsonl'}",
                                                     f"judge.judges_dir={REPO / 'judges'}"])
    first = fine_tune_then_judge(config)
    second = fine_tune_then_judge(config)
    return runs_dir, first, second


def test_all_five_stages_complete_with_outputs(two_runs):
    runs_dir, first, _ = two_runs
    run = RunDir(Path(first["run_dir"]))
    manifest = run.manifest()
    assert manifest["status"] == "completed"
    assert [manifest["stages"][s]["status"] for s in STAGES] == ["completed"] * 5
    for name in ("config.yaml", "data/train.jsonl", "data/val.jsonl", "data/test.jsonl", "data/quarantine.jsonl",
                 "generations.jsonl", "judgments.jsonl", "metrics.json", "report.md", "loss_curve.png"):
        assert (run / name).is_file(), name


def test_losses_recorded_for_every_epoch(two_runs):
    _, first, _ = two_runs
    epochs = read_jsonl(Path(first["run_dir"]) / files.EPOCH_METRICS)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["train_loss"] > 0 and e["val_loss"] > 0 for e in epochs)
    sft = json.loads((Path(first["run_dir"]) / files.SFT_SUMMARY).read_text())
    assert sft["test_loss"] > 0 and sft["test_ppl"] > 1


def test_every_test_item_generated_and_judged(two_runs):
    _, first, _ = two_runs
    run = Path(first["run_dir"])
    test_ids = [r["id"] for r in read_jsonl(run / files.TEST)]
    assert len(test_ids) >= 30  # ~10% of the sample's ~380 clean rows: curation must not starve the test split
    assert [g["id"] for g in read_jsonl(run / files.GENERATIONS)] == test_ids
    judgments = read_jsonl(run / files.JUDGMENTS)
    assert [j["id"] for j in judgments] == test_ids
    assert all(1.0 <= j["score"] <= 10.0 for j in judgments)
    assert all(-1.0 <= j["metrics"]["similarity"] <= 1.0 for j in judgments)  # the (tiny) sentence encoder ran
    baseline = read_jsonl(run / files.BASELINE_JUDGMENTS)  # the base model's answers, judged item by item
    assert [b["id"] for b in baseline] == test_ids and all("rouge_l" in b["metrics"] for b in baseline)
    metrics = json.loads((run / files.METRICS).read_text())
    assert metrics["anchors"]["items"] == len(test_ids) and set(metrics["normalised"]) == {"run", "base"}
    dims = ["accuracy", "completeness", "format", "clarity"]
    assert list(metrics["dimensions"]["run"]) == dims and list(metrics["dimensions"]["base"]) == dims
    assert all(list(j["dimensions"]) == dims for j in judgments)
    assert [a["id"] for a in read_jsonl(run / files.ANCHORS)] == test_ids
    consistency = json.loads((run / files.DECISION).read_text())["comparison"]["consistency"]
    assert [r["signal"] for r in consistency["the base model"]] == ["judge", "ROUGE-L", "token F1",
                                                                    "semantic similarity"]
    baseline = json.loads((run / files.METRICS).read_text())["baseline"]  # configs/tiny.yaml: baseline on
    assert baseline["items"] == len(test_ids) and baseline["model"].startswith("base:")


def test_rows_in_equal_kept_plus_dropped(two_runs):
    _, first, _ = two_runs
    report = json.loads((Path(first["run_dir"]) / files.DATA_REPORT).read_text())
    quarantined = read_jsonl(Path(first["run_dir"]) / files.QUARANTINE)
    assert report["rows_in"] == sum(report["splits"].values()) + len(quarantined)
    assert all(q["reason"] and q["source"] for q in quarantined)


def test_first_promoted_second_compared_with_reasons(two_runs):
    runs_dir, first, second = two_runs
    assert first["decision"] == "promote"
    assert second["decision"] in ("promote", "hold", "rollback")
    decision = json.loads((Path(second["run_dir"]) / files.DECISION).read_text())
    assert decision["champion_before"] == first["run_id"]
    assert any("judge score" in r for r in decision["reasons"])
    pairwise = json.loads((Path(second["run_dir"]) / files.METRICS).read_text())["pairwise"]
    assert pairwise["pairs"] == len(read_jsonl(Path(second["run_dir"]) / files.TEST))
    registry = Registry.in_runs_dir(runs_dir)
    assert [r["run_id"] for r in registry.runs()] == [first["run_id"], second["run_id"]]
    expected = second["run_id"] if second["decision"] == "promote" else first["run_id"]
    assert registry.champion()["run_id"] == expected


def test_cli_lists_both_runs(two_runs, capsys):
    runs_dir, first, second = two_runs
    assert main(["runs", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert first["run_id"] in out and second["run_id"] in out
    assert main(["show", second["run_id"][:18], "--runs-dir", str(runs_dir)]) == 0
    assert "decision:" in capsys.readouterr().out


def test_rerun_of_a_finished_stage_is_skipped(two_runs):
    from sftjudge.train.stage import sft_stage

    _, first, _ = two_runs
    run = RunDir(Path(first["run_dir"]))
    before = run.stage_info("sft")
    config = load_config(REPO / "configs/tiny.yaml")
    assert sft_stage(first["run_dir"], config) == before
    assert run.stage_info("sft")["attempts"] == 1


def test_cli_diff_report_promote_rollback(two_runs, capsys, tmp_path):
    runs_dir, first, second = two_runs
    assert main(["diff", first["run_id"], second["run_id"], "--runs-dir", str(runs_dir), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["config"] == {} and diff["results"]["decision"] == ["promote", second["decision"]]
    first_tax = json.loads((Path(first["run_dir"]) / files.METRICS).read_text())["regression"]["categories"]
    assert diff["results"]["alignment_tax.safety"][0] == first_tax["safety"]["tax"]
    assert main(["report", second["run_id"], "--runs-dir", str(runs_dir), "--html"]) == 0
    html = (Path(second["run_dir"]) / files.REPORT_HTML).read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "Decision" in html
    registry = Registry.in_runs_dir(runs_dir)
    before = registry.champion()["run_id"]
    other = second["run_id"] if before == first["run_id"] else first["run_id"]
    assert main(["promote", other, "--runs-dir", str(runs_dir)]) == 0
    assert registry.champion()["run_id"] == other
    assert main(["rollback", "--runs-dir", str(runs_dir)]) == 0
    assert registry.champion()["run_id"] == before


def test_regression_suite_answered_judged_and_reported(two_runs):
    _, first, second = two_runs
    from sftjudge.judge.suite import load_suite

    suite = load_suite("general")
    run = Path(first["run_dir"])
    assert [g["id"] for g in read_jsonl(run / files.REGRESSION_GENERATIONS)] == [r.id for r in suite]
    assert [g["id"] for g in read_jsonl(run / files.REGRESSION_BASELINE)] == [r.id for r in suite]
    judged = read_jsonl(run / files.REGRESSION_JUDGMENTS)
    assert sorted((j["model"], j["id"]) for j in judged) == sorted(
        (m, r.id) for m in ("run", "base") for r in suite)
    regression = json.loads((run / files.METRICS).read_text())["regression"]
    assert set(regression["categories"]) == {r.meta["category"] for r in suite}
    for c in regression["categories"].values():
        assert c["items"] == 4 and c["tax"] == pytest.approx(c["base"] - c["run"], abs=1e-3)
    # The base model's suite answers are generated once and shared: the second run got the same ones.
    again = read_jsonl(Path(second["run_dir"]) / files.REGRESSION_BASELINE)
    assert [g["text"] for g in again] == [g["text"] for g in read_jsonl(run / files.REGRESSION_BASELINE)]
    report = (Path(second["run_dir"]) / files.REPORT).read_text()
    assert "## Regression suite (alignment tax)" in report and "| safety |" in report


def test_prefect_artifacts_carry_the_judge_and_regression_tables(two_runs):
    from prefect.artifacts import Artifact

    _, first, _ = two_runs
    run_id = first["run_id"]
    regression = Artifact.get(f"regression-{run_id}")
    assert regression is not None and "| safety |" in regression.data and "tax" in regression.data
    judge = Artifact.get(f"judge-{run_id}")
    assert judge is not None and "judge score mean" in judge.data


def test_both_cycles_are_in_mlflow_with_the_champion_alias(two_runs):
    """What a user sees in `mlflow ui` after two cycles: two runs with their losses and decisions, and the registered
    champion's alias on the run the registry holds as champion."""
    from mlflow.tracking import MlflowClient

    runs_dir, first, second = two_runs
    uri = f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("sftjudge")
    logged = {r.data.tags["sftjudge.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(logged) == {first["run_id"], second["run_id"]}
    for summary in (first, second):
        assert summary["tracking"]["status"] == "logged"
        assert logged[summary["run_id"]].data.tags["sftjudge.action"] == summary["decision"]
        assert len(client.get_metric_history(logged[summary["run_id"]].info.run_id, "val_loss")) >= 1
    champion = Registry.in_runs_dir(runs_dir).champion()["run_id"]
    alias = client.get_model_version_by_alias("sftjudge-tiny", "champion")
    assert alias.run_id == logged[champion].info.run_id


def test_the_judge_stage_says_where_its_time_went(two_runs):
    _, _, second = two_runs
    seconds = json.loads((Path(second["run_dir"]) / files.METRICS).read_text())["seconds"]
    assert {"pointwise", "rubric", "anchors", "base model", "pairwise", "noise", "regression suite"} <= set(seconds)
    assert all(value >= 0 for value in seconds.values()) and seconds["pointwise"] > 0
