"""Careless operations and bad settings, round two (issue 16): config, judge definitions, training, the registry,
run files and the CLI - each fix with the reproduction that failed before it. Bad input data is in
test_fault_round_two_data.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftjudge import cli
from sftjudge.config_yaml import load_config
from sftjudge.errors import ConfigError, JudgeError, RegistryError

from .faultkit import REPO


def test_an_override_that_is_not_yaml_says_how_to_quote_it(capsys):
    quote = r"""put it in single quotes inside the argument: "judge.format_regex='\[A-Z\]"""
    with pytest.raises(ConfigError, match=quote):
        load_config(None, ["judge.format_regex=[A-Z]{3}-\\d+"])
    assert load_config(None, ["judge.format_regex='[A-Z]{3}-\\d+'"]).judge.format_regex == "[A-Z]{3}-\\d+"
    assert cli.main(["run", str(REPO / "configs/tiny.yaml"), "judge.format_regex=[A-Z]{3}-\\d+"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["sft.learning_rate=.inf", "sft.learning_rate=.nan", "decide.min_improvement=.inf",
                                      "judge.health.min_score_stdev=.nan", "data.near_dedup.threshold=.nan"])
def test_an_infinite_or_nan_setting_is_refused(override):
    with pytest.raises(ConfigError, match="finite number"):
        load_config(None, [override])


@pytest.mark.model
def test_a_diverging_training_stops_with_what_to_change_and_keeps_no_checkpoint(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from helpers import example

    from sftjudge.config import SFTConfig
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train import loop

    monkeypatch.setattr(loop, "_split_loss", lambda state, examples, desc: math.nan)
    model, tok = load_causal_lm(str(tiny_model_dir))
    rows = [example(i, f"question {i}", "answer") for i in range(4)]
    with pytest.raises(ConfigError, match=r"training diverged in epoch 1 .* lower sft.learning_rate"):
        loop.train(model, tok, loop.TrainData(train=rows, val=rows[:2]),
                   SFTConfig(epochs=1, batch_size=2, max_seq_len=64, lora_r=4, precision="fp32"), tmp_path)
    assert not (tmp_path / "epoch-1").exists()


def test_a_run_with_a_non_finite_loss_is_never_promoted():
    from helpers import decide_rules

    from sftjudge.decide.records import RunResult
    from sftjudge.decide.rules import decide

    nan = RunResult(run_id="r", judge_score=9.0, train_loss=math.nan, val_loss=math.nan, test_fingerprint="t",
                    judge_key="j", item_scores={"0": 9.0}, train_losses=(0.5, math.nan), val_losses=(0.6, math.nan))
    decision = decide(nan, None, decide_rules())
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("training diverged: a loss is not a finite number")


def _judge(tmp_path, prompt: str, prompt_file: str = "p.txt"):
    from sftjudge.judge.spec import load_judge

    folder = tmp_path / "j"
    folder.mkdir(exist_ok=True)
    (folder / "p.txt").write_text(prompt)
    (folder / "judge.yaml").write_text(f"name: j\nprompt_file: {prompt_file}\n")
    return load_judge(tmp_path, "j")


def test_a_judge_prompt_with_stray_braces_is_refused_when_loaded(tmp_path):
    with pytest.raises(JudgeError, match=r"p.txt: \{\"score\"\} is not one of the judge's inputs .* doubled"):
        _judge(tmp_path, 'Q {instruction} R {reference} A {answer}. Reply like {"score": 7}')
    with pytest.raises(JudgeError, match=r"\{nonexistent_field\} is not one of the judge's inputs"):
        _judge(tmp_path, "Q {instruction} R {reference} A {answer} {nonexistent_field}")
    spec = _judge(tmp_path, 'Q {instruction} R {reference} A {answer}. Reply like {{"score": 7}}')
    assert '{"score": 7}' in spec.render_messages({"instruction": "q", "reference": "r", "answer": "a"})[-1]["content"]


def test_judge_files_must_exist_and_stay_in_the_judge_folder(tmp_path):
    (tmp_path / "outside.txt").write_text("{instruction} {reference} {answer}")
    with pytest.raises(JudgeError, match="points outside the judge folder"):
        _judge(tmp_path, "{instruction} {reference} {answer}", prompt_file="../outside.txt")
    with pytest.raises(JudgeError, match="'missing.txt' does not exist"):
        _judge(tmp_path, "{instruction} {reference} {answer}", prompt_file="missing.txt")


def test_a_bug_raising_key_error_is_not_printed_as_a_registry_refusal(monkeypatch):
    def buggy(args):
        raise KeyError("nonexistent_field")

    monkeypatch.setitem(cli.COMMANDS, "runs", buggy)
    assert cli.main(["runs"]) == 1  # not 2 and "sftjudge: nonexistent_field": a bug, named as one
    with pytest.raises(KeyError):
        cli.main(["--debug", "runs"])


def test_rollback_walks_back_through_the_champions_and_never_ping_pongs(tmp_path, capsys):
    from sftjudge.run.registry import Registry

    registry = Registry.in_runs_dir(str(tmp_path))
    for run_id in ("a", "b", "c"):
        registry.record({"run_id": run_id, "name": run_id, "created_at": run_id, "decision": "promote",
                         "reasons": []}, promote=True)
    assert registry.rollback() == ("c", "b")
    assert registry.rollback() == ("b", "a")  # before: ("b", "c") - back to the run just demoted
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    assert registry.champion()["run_id"] == "a"
    assert cli.main(["rollback", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "sftjudge: there is no earlier champion to roll back to"


def test_two_writers_of_one_directory_both_finish_and_leave_one_whole_copy(tmp_path):
    import threading

    from sftjudge.run.io import atomic_directory

    final = tmp_path / "cache"
    for round_ in range(30):
        barrier, errors = threading.Barrier(2), []

        def write(name: str) -> None:
            try:
                with atomic_directory(final) as tmp:
                    (tmp / "a").write_text(name)
                    (tmp / "b").write_text(name)
                    barrier.wait()  # both inside the context at once: the race the issue measured (117 of 200)
            except Exception as exc:  # noqa: BLE001 - the test reports any failure of either writer
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"round {round_}: {errors}"
        assert (final / "a").read_text() == (final / "b").read_text()  # one writer's copy, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing left aside


def test_run_files_and_folders_follow_the_umask(tmp_path):
    import os
    import stat

    from sftjudge.run.io import atomic_directory, atomic_write_text

    before = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "shared")
        with atomic_directory(tmp_path / "checkpoint") as tmp:
            (tmp / "x").write_text("y")
        assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644  # before: 0o600
        assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == 0o755  # before: 0o700
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.md", "mine")
        assert stat.S_IMODE((tmp_path / "private.md").stat().st_mode) == 0o600
    finally:
        os.umask(before)


def test_what_the_config_refers_to_is_checked_before_any_run_directory_exists(tmp_path, capsys):
    from sftjudge.run.stage import start_run

    runs = tmp_path / "runs"
    config = load_config(REPO / "configs/tiny.yaml", [
        f"runs_dir={runs}", f"judge.judges_dir={REPO / 'judges'}", "judge.judge=refrence-score",
        "judge.format=regex", f"judge.json_schema={tmp_path / 'schema.json'}",
        f"regression.suite={tmp_path / 'suite.jsonl'}", "judge.rubric=reference-score"])
    with pytest.raises(ConfigError) as info:
        start_run(config)
    message = str(info.value)
    for expected in ("judge.judge='refrence-score'", "no such judge definition",
                     "judge.format is 'regex' but judge.format_regex is not set", "judge.json_schema",
                     "suite.jsonl", "judge.rubric='reference-score' is a score judge, not a rubric"):
        assert expected in message, expected
    assert not runs.exists()  # nothing created, nothing trained
    bad_regex = ["judge.format=regex", "judge.format_regex='[A-Z'"]
    assert cli.main(["run", str(REPO / "configs/tiny.yaml"), f"runs_dir={runs}", *bad_regex]) == 2
    assert "is not a valid regular expression" in capsys.readouterr().err


@pytest.mark.model
def test_show_prints_the_error_of_a_failed_stage(tiny_data, tiny_model_dir, tmp_path, capsys):
    from sftjudge.curate.stage import curate_stage
    from sftjudge.errors import DataError
    from sftjudge.run.stage import start_run

    from .faultkit import fault_config

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x"}\nnot json\n')
    config = fault_config(tmp_path / "runs", path)
    run = Path(start_run(config))
    with pytest.raises(DataError):
        curate_stage(str(run), config)
    assert cli.main(["show", run.name, "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "curate failed: DataError:" in out and "only 0 usable rows" in out


def test_a_truncated_registry_is_refused_and_rebuilt_from_the_run_directories(base_run, tmp_path, capsys):
    from sftjudge.decide.stage import decide_stage
    from sftjudge.run import files
    from sftjudge.run.registry import Registry

    from .faultkit import clone_run, set_scores

    runs = tmp_path / "runs"
    a, b = clone_run(base_run, runs, "a", reset=("decide",)), clone_run(base_run, runs, "b", reset=("decide",))
    set_scores(a, [4.0, 4.2, 3.8, 4.1, 3.9, 4.0])
    set_scores(b, [7.0, 7.2, 6.8, 7.1, 6.9, 7.0])
    config = load_config(a / files.CONFIG, [f"runs_dir={runs}"])
    assert [decide_stage(str(run), config)["counts"]["action"] for run in (a, b)] == ["promote", "promote"]

    released = Registry.in_runs_dir(runs).release("b", {"passed": 6, "labelled": 6}, {"pass_rate": 0.9})
    (b / files.REVIEW_RELEASE).parent.mkdir(exist_ok=True)
    (b / files.REVIEW_RELEASE).write_text(json.dumps(released))

    (runs / "registry.sqlite").write_bytes(b"")  # truncated: before, silently taken for a new, empty registry
    with pytest.raises(RegistryError, match="is empty .0 bytes.: the registry was truncated"):
        Registry.in_runs_dir(runs)
    assert cli.main(["runs", "--runs-dir", str(runs)]) == 2
    assert "sftjudge registry rebuild" in capsys.readouterr().err

    assert cli.main(["registry", "rebuild", "--runs-dir", str(runs)]) == 0
    assert "2 runs, champion b" in capsys.readouterr().out
    registry = Registry.in_runs_dir(runs)
    assert [r["run_id"] for r in registry.runs()] == ["a", "b"] and registry.champion()["run_id"] == "b"
    assert [(r["run_id"], r["released_at"], r["evidence"]) for r in registry.releases()] == [
        ("b", released["released_at"], {"passed": 6, "labelled": 6})]  # the release came back too
    assert (runs / "registry.sqlite.damaged").exists()


@pytest.mark.parametrize("override", ["sft.epochs=true", "judge.noise_items=false", "decide.min_improvement=true"])
def test_a_yes_no_where_a_number_belongs_is_refused(override):
    with pytest.raises(ConfigError, match="is a yes/no, but .* takes a number"):  # before: true became 1
        load_config(None, [override])


@pytest.mark.model
def test_a_damaged_checkpoint_names_its_epoch_and_is_not_retried(tiny_model_dir, tmp_path):
    from helpers import example

    from sftjudge.config import SFTConfig
    from sftjudge.errors import ModelError, UserError
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.loop import TrainData, train

    rows = [example(i, f"question {i}", "answer") for i in range(4)]
    data = TrainData(train=rows, val=rows[:2])
    sft = SFTConfig(epochs=1, batch_size=2, max_seq_len=64, lora_r=4, precision="fp32")
    model, tok = load_causal_lm(str(tiny_model_dir))
    train(model, tok, data, sft, tmp_path)
    (tmp_path / "epoch-1" / "adapter_model.safetensors").write_bytes(b"half a file")  # a disk error, a bad copy
    model, tok = load_causal_lm(str(tiny_model_dir))
    with pytest.raises(ModelError, match=r"epoch-1: the epoch-1 checkpoint cannot be resumed from .*delete") as info:
        train(model, tok, data, sft.model_copy(update={"epochs": 2}), tmp_path)
    assert isinstance(info.value, UserError)  # the retry policy fails it at once instead of retrying twice


def test_a_deleted_champion_directory_is_named_in_decide_champion_and_rollback(base_run, tmp_path, capsys):
    import shutil

    from sftjudge.decide.stage import decide_stage
    from sftjudge.run import files

    from .faultkit import clone_run, set_scores

    runs = tmp_path / "runs"
    a, b, c = (clone_run(base_run, runs, name, reset=("decide",)) for name in ("a", "b", "c"))
    for run, scores in ((a, [4.0] * 6), (b, [7.0, 7.2, 6.8, 7.1, 6.9, 7.0])):
        set_scores(run, scores)
    config = load_config(a / files.CONFIG, [f"runs_dir={runs}"])
    decide_stage(str(a), config)
    decide_stage(str(b), config)
    shutil.rmtree(b)  # the champion's run directory, deleted by hand
    decide_stage(str(c), config)
    warnings = __import__("json").loads((c / files.DECISION).read_text())["warnings"]
    assert any(w.startswith(f"the champion's run directory {b.resolve()} is gone") for w in warnings)
    assert cli.main(["champion", "--runs-dir", str(runs)]) == 0
    assert "warning: the champion's run directory" in capsys.readouterr().err
    assert cli.main(["rollback", "--runs-dir", str(runs)]) == 0  # back to a, whose directory exists: no warning
    assert "warning" not in capsys.readouterr().err


@pytest.mark.flow
def test_an_interrupted_run_is_shown_as_such_and_resumed(prefect_harness, base_run, tmp_path):
    import socket
    import subprocess
    import sys

    from sftjudge.run import files
    from sftjudge.run.directory import RunDir

    from .faultkit import clone_run

    runs = tmp_path / "runs"
    run = RunDir(clone_run(base_run, runs, "killed", reset=("judge", "decide")))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    run._set_stage("judge", {"status": "running", "started_at": "2026-12-02T08:00:00+00:00", "attempts": 1,
                             "pid": int(gone.stdout), "host": socket.gethostname()})  # as kill -9 leaves it
    from sftjudge.run.summary import format_summary, run_summary

    out = format_summary(run_summary(run.path))  # what `sftjudge show killed` prints
    assert "run killed: interrupted" in out and "sftjudge resume killed" in out  # before: "running", forever
    assert cli.main(["resume", "killed", "--runs-dir", str(runs)]) == 0
    manifest = run.manifest()
    assert manifest["status"] == "completed" and manifest["stages"]["judge"]["attempts"] == 2
    assert manifest["stages"]["sft"]["attempts"] == 1  # finished stages were not redone
    assert (run.path / files.DECISION).is_file()


