"""Bad input and careless operations, round two (issue 16): the ones fixed so far, each with the reproduction that
failed before the fix."""

from __future__ import annotations

import math

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
    with pytest.raises(KeyError):
        cli.main(["runs"])


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
