"""The whole judge stage with judge.backend=openai against a scripted server on 127.0.0.1: scores come from the
server, the identity names the served model, the API key is in no file or log line, and a server that fails the
stage leaves a retry that judges only what is missing."""

from __future__ import annotations

import json
import logging

import pytest

import served_fake
from sftjudge.config_yaml import load_config
from sftjudge.errors import JudgeError
from sftjudge.judge.stage import judge_stage
from sftjudge.run import files
from sftjudge.run.io import read_jsonl

from .faultkit import clone_run

KEY = "sk-never-write-me-4711"


@pytest.fixture
def server():
    script = served_fake.Script()
    # The answer decides the score: the scripted judge likes answers that contain the reference's intent.
    script.distribution = lambda body: {"9": 0.9, "8": 0.1} if "billing" in body["messages"][-2]["content"] \
        else {"4": 0.8, "5": 0.2}
    httpd, url = served_fake.start(script)
    yield script, url
    httpd.shutdown()
    httpd.server_close()


def served_config(run_path, runs, url, *more):
    return load_config(run_path / files.CONFIG, [f"runs_dir={runs}", "judge.backend=openai",
                                                 f"judge.openai.base_url={url}", "judge.openai.model=judge-x",
                                                 "judge.openai.max_retries=0", *more])


def test_the_judge_stage_runs_on_a_served_judge_and_keeps_the_key_out_of_every_file(
        base_run, tmp_path, server, monkeypatch, caplog):
    script, url = server
    monkeypatch.setenv("SFTJUDGE_JUDGE_API_KEY", KEY)
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "served", reset=("judge", "decide"))
    config = served_config(run_path, runs, url)
    with caplog.at_level(logging.DEBUG):
        judge_stage(str(run_path), config)

    metrics = json.loads((run_path / files.METRICS).read_text())
    assert metrics["judge"].startswith("reference-score@judge-x#")
    judged = read_jsonl(run_path / files.JUDGMENTS)
    assert judged and all(j["score"] in (pytest.approx(8.9), pytest.approx(4.2)) for j in judged)
    assert metrics["dimensions"]["run"]  # the rubric ran on the server too
    assert metrics["anchors"]["items"] == len(judged)
    assert metrics["health"]["measures"]["judge_params"] is None  # a served judge's size is unknown
    assert all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in script.requests)
    for path in run_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert KEY not in caplog.text


def test_a_failing_server_fails_the_stage_clearly_and_the_retry_judges_only_what_is_missing(
        base_run, tmp_path, server):
    script, url = server
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "served-retry", reset=("judge", "decide"))
    config = served_config(run_path, runs, url, "judge.anchors=false")
    items = len(read_jsonl(run_path / files.GENERATIONS))
    original, answered = script.distribution, {"n": 0}

    def down_after_the_pointwise_scores(body):
        answered["n"] += 1
        if answered["n"] >= items:
            script.fail_with.append(503)  # every later request fails: the server went away mid-stage
        return original(body)

    script.distribution = down_after_the_pointwise_scores
    with pytest.raises(JudgeError, match="HTTP 503"):
        judge_stage(str(run_path), config)
    manifest = json.loads((run_path / files.MANIFEST).read_text())
    assert manifest["stages"]["judge"]["status"] == "failed"

    script.distribution, script.fail_with = original, []
    before = len(script.requests)
    judge_stage(str(run_path), config)
    asked = [r["body"]["messages"][-1]["content"] for r in script.requests[before:]
             if r["body"] and r["body"].get("logprobs")]
    assert "Score: " not in asked  # the pointwise scores came from the run's judgment cache
    assert asked.count("Accuracy: ") == items  # the rubric, which failed, was judged again
    assert len(read_jsonl(run_path / files.JUDGMENTS)) == items


def test_a_server_that_echoes_the_key_in_an_error_puts_it_in_no_file(base_run, tmp_path, server, monkeypatch,
                                                                       capsys):
    from sftjudge import cli

    script, url = server
    monkeypatch.setenv("SFTJUDGE_JUDGE_API_KEY", KEY)
    script.fail_with, script.echo_headers = [400], True  # the server's error repeats the Authorization header
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "echo", reset=("judge", "decide"))
    with pytest.raises(JudgeError, match="request headers"):
        judge_stage(str(run_path), served_config(run_path, runs, url))
    assert "request headers" in json.loads((run_path / files.MANIFEST).read_text())["stages"]["judge"]["error"]
    cli.main(["show", "echo", "--runs-dir", str(runs)])
    shown = capsys.readouterr()
    for path in run_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert KEY not in shown.out + shown.err
