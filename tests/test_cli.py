from pathlib import Path

import pytest

from sftjudge.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "runs", "show", "champion", "models"):
        assert command in out


def test_runs_on_empty_registry(tmp_path, capsys):
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert "no runs recorded" in capsys.readouterr().out


def test_bad_override_exits_2_naming_the_field(capsys):
    assert main(["run", str(REPO / "configs/tiny.yaml"), "sft.epochz=1"]) == 2
    assert "sft.epochz" in capsys.readouterr().err


def test_run_parses_config_and_overrides():
    args = build_parser().parse_args(["run", "configs/demo.yaml", "sft.epochs=3"])
    assert args.config == "configs/demo.yaml" and args.overrides == ["sft.epochs=3"]
