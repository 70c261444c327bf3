"""Config errors - unknown keys, wrong types, impossible values and ratios - fail before any work starts, with
an error naming the file and the dotted field."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest
from pydantic import ValidationError

from sftjudge.cli import main
from sftjudge.config import RunConfig
from sftjudge.config_yaml import load_config
from sftjudge.errors import ConfigError

from .faultkit import REPO

BAD_OVERRIDES = [
    # unknown keys (typos), at every depth
    ("sft.epoch=3", "sft.epoch", "Extra inputs are not permitted"),
    ("lerning_rate=0.1", "lerning_rate", "Extra inputs are not permitted"),
    ("data.near_dedup.treshold=0.5", "data.near_dedup.treshold", "Extra inputs are not permitted"),
    ("judge.health.min_lable_mass=0.2", "judge.health.min_lable_mass", "Extra inputs are not permitted"),
    # wrong types
    ("sft.epochs=many", "sft.epochs", "valid integer"),
    ("sft.learning_rate=fast", "sft.learning_rate", "valid number"),
    ("sft.target_modules=5", "sft.target_modules", "valid list"),
    ("data.strict=maybe", "data.strict", "valid boolean"),
    ("judge.batch_size=[1, 2]", "judge.batch_size", "valid integer"),
    ("data=5", "data", "valid dictionary"),
    ("data.contamination.action=delete", "data.contamination.action", "'report', 'drop' or 'fail'"),
    # impossible values
    ("sft.epochs=0", "sft.epochs", "greater than or equal to 1"),
    ("sft.lora_dropout=1.5", "sft.lora_dropout", "less than 1"),
    ("generate.temperature=-1", "generate.temperature", "greater than or equal to 0"),
    ("judge.health.max_unparseable_rate=2", "judge.health.max_unparseable_rate", "less than or equal to 1"),
    ("decide.max_val_train_ratio=0.5", "decide.max_val_train_ratio", "greater than 1"),
    # impossible split ratios
    ("data.train_ratio=0.9", "data", "train_ratio + val_ratio + test_ratio must be 1.0, got 1.1000"),
    ("data.val_ratio=0", "data.val_ratio", "greater than 0"),
    ("data.test_ratio=-0.1", "data.test_ratio", "greater than 0"),
    ("data.train_ratio=1", "data.train_ratio", "less than 1"),
]


@pytest.mark.parametrize("override, field, problem", BAD_OVERRIDES)
def test_bad_override_is_refused_naming_the_field(override, field, problem):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/tiny.yaml", [override])
    message = str(info.value)
    assert f"invalid config ({REPO / 'configs/tiny.yaml'})" in message
    assert f"{field}: " in message and problem in message, message


@pytest.mark.parametrize("text, expected", [
    ("sft:\n  epochs: 2\n  lerning_rate: 0.1\n", "sft.lerning_rate: Extra inputs are not permitted"),
    ("data:\n  val_ratio: 0.5\n", "train_ratio + val_ratio + test_ratio must be 1.0"),
    ("sft: [1, 2]\n", "sft: Input should be a valid dictionary"),
    ("- just\n- a list\n", "must hold a mapping at the top level"),
    ("sft:\n  epochs: [unclosed\n", "is not valid YAML"),
])
def test_bad_config_file_is_refused_naming_file_and_field(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_bad_config_stops_the_cli_before_any_work(tmp_path, monkeypatch, capsys):
    flow = ModuleType("flows.cycle")
    flow.fine_tune_then_judge = lambda config: pytest.fail("the cycle started with an invalid config")
    monkeypatch.setitem(sys.modules, "flows.cycle", flow)
    runs = tmp_path / "runs"
    assert main(["run", str(REPO / "configs/tiny.yaml"), f"runs_dir={runs}", "sft.epoch=3",
                 "data.train_ratio=0.9"]) == 2
    err = capsys.readouterr().err
    assert "sft.epoch: Extra inputs are not permitted" in err and "must be 1.0" in err  # every problem at once
    assert not runs.exists()


def test_a_loaded_config_refuses_bad_assignments_too():
    config = RunConfig()
    with pytest.raises(ValidationError, match="epochs"):
        config.sft.epochs = "many"
    with pytest.raises(ValidationError, match="epoch"):
        config.sft.epoch = 3
    assert config.sft.epochs == 2
