from pathlib import Path

import pytest

from sftjudge.config import RunConfig
from sftjudge.config_yaml import apply_overrides, dump_config, load_config
from sftjudge.errors import ConfigError
from sftjudge.run import files

REPO = Path(__file__).resolve().parent.parent


def test_demo_and_tiny_configs_load():
    demo = load_config(REPO / "configs/demo.yaml")
    tiny = load_config(REPO / "configs/tiny.yaml")
    assert demo.sft.base_model == "smollm2-135m-instruct"
    assert demo.judge.model == "qwen2.5-coder-1.5b-instruct"
    assert tiny.sft.base_model == "tiny" and tiny.judge.model == "tiny"


def test_dotted_overrides_are_typed():
    config = load_config(REPO / "configs/demo.yaml", ["sft.epochs=3", "sft.learning_rate=5e-4", "name=exp 2"])
    assert config.sft.epochs == 3
    assert config.sft.learning_rate == pytest.approx(5e-4)
    assert config.name == "exp 2"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"sft\.epoch: Extra inputs are not permitted"):
        load_config(None, ["sft.epoch=3"])


def test_wrong_type_names_field_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*sft\.epochs"):
        load_config(path)


def test_impossible_ratios_rejected():
    with pytest.raises(ConfigError, match="must be 1.0"):
        load_config(None, ["data.train_ratio=0.9", "data.val_ratio=0.1", "data.test_ratio=0.1"])


def test_override_into_a_value_is_rejected():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.first=y"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trips(tmp_path):
    config = load_config(None, ["sft.epochs=4"])
    path = tmp_path / files.CONFIG
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_every_field_is_described():
    def walk(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")

    walk(RunConfig)
