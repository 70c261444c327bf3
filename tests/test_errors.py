"""Errors the user must fix share one base class: the retry policy and the CLI decide by that class alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sftjudge.tasks.policy import retry_unless_user_error

from sftjudge import cli
from sftjudge.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    JudgeError,
    ModelError,
    TemplateError,
    UserError,
)

USER_ERRORS = [ConfigError, DataError, JudgeError, CalibrationError, ModelError, TemplateError]


def failed_with(error: BaseException):
    return SimpleNamespace(result=lambda raise_on_failure=True: error)


@pytest.mark.parametrize("cls", USER_ERRORS)
def test_a_user_error_is_never_retried(cls):
    assert issubclass(cls, UserError)
    assert retry_unless_user_error(None, None, failed_with(cls("fix me"))) is False


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), OSError(28, "No space left on device"),
                                   ValueError("a bug, not the user's input")])
def test_other_failures_are_retried(error):
    assert retry_unless_user_error(None, None, failed_with(error)) is True


@pytest.mark.parametrize("cls", USER_ERRORS)
def test_cli_prints_any_user_error_and_exits_2(cls, monkeypatch, capsys):
    def fails(args):
        raise cls("data.path: tickets.jsonl:3: field 'prompt' missing")

    monkeypatch.setitem(cli.COMMANDS, "runs", fails)
    assert cli.main(["runs"]) == 2
    assert "sftjudge: data.path: tickets.jsonl:3: field 'prompt' missing" in capsys.readouterr().err


def test_cli_shows_a_bug_in_one_line_and_its_traceback_with_debug(monkeypatch, capsys):
    def fails(args):
        raise ValueError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "runs", fails)
    assert cli.main(["runs"]) == 1
    assert "sftjudge: ValueError: a bug\n(an unexpected error: `sftjudge --debug runs ...`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["--debug", "runs"])


@pytest.mark.model
def test_target_modules_matching_nothing_is_a_config_error(tiny_model):
    from sftjudge.config import SFTConfig
    from sftjudge.train.loop import attach_adapters

    model, _ = tiny_model
    with pytest.raises(ConfigError, match=r"sft.target_modules \['qkv'\] match no module"):
        attach_adapters(model, SFTConfig(target_modules=["qkv"]))


def test_a_moved_setting_says_where_it_went():
    from sftjudge.config_yaml import load_config

    with pytest.raises(ConfigError, match="decide.noise_items is now judge.noise_items"):
        load_config(None, ["decide.noise_items=5"])
    assert load_config(None, ["judge.noise_items=5"]).judge.noise_items == 5
