"""`sftjudge export`: the chosen checkpoint merged into a standalone folder that transformers loads as is, which
reproduces the run's greedy test answers, with a model card that says what the run recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults.faultkit import fault_config, tiny_rows

from sftjudge.cli import main
from sftjudge.errors import ModelError
from sftjudge.run import files


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, sftjudge_home, tiny_model_dir) -> Path:
    """A tiny run through every stage, trained and generating in bf16 (what the export writes)."""
    from sftjudge.curate.stage import curate_stage
    from sftjudge.decide.stage import decide_stage
    from sftjudge.generate.stage import generate_stage
    from sftjudge.judge.stage import judge_stage
    from sftjudge.run.stage import start_run
    from sftjudge.train.stage import sft_stage

    runs = tmp_path_factory.mktemp("export-runs")
    data = runs / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()), encoding="utf-8")
    config = fault_config(runs, data, "sft.precision=bf16", "sft.epochs=1")
    run = start_run(config, run_id="exported")
    for stage in (curate_stage, sft_stage, generate_stage, judge_stage, decide_stage):
        stage(run, config)
    return Path(run)


@pytest.mark.model
def test_the_exported_folder_loads_with_transformers_and_reproduces_the_greedy_answers(bf16_run, tmp_path,
                                                                                        sftjudge_home):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftjudge.export.merge import export_run
    from sftjudge.generate.backends import GenerationParams, TransformersGenerator
    from sftjudge.run.io import read_jsonl

    out = export_run(bf16_run, tmp_path / "model", sftjudge_home)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and tokenizer.chat_template  # the template it was trained with
    assert model.generation_config.do_sample is False
    generations = read_jsonl(bf16_run / files.GENERATIONS)
    params = GenerationParams(**generations[0]["params"])
    assert model.generation_config.max_new_tokens == params.max_new_tokens
    again = TransformersGenerator(model, tokenizer, batch_size=4).generate([g["prompt"] for g in generations],
                                                                             params)
    assert [a.text for a in again] == [g["text"] for g in generations]


@pytest.mark.model
def test_the_model_card_says_what_the_run_recorded(bf16_run, tmp_path, sftjudge_home):
    from sftjudge.export.merge import export_run

    card = (export_run(bf16_run, tmp_path / "model", sftjudge_home) / "README.md").read_text()
    sft = json.loads((bf16_run / files.SFT_SUMMARY).read_text())
    report = json.loads((bf16_run / files.DATA_REPORT).read_text())
    decision = json.loads((bf16_run / files.DECISION).read_text())
    assert "base_model: tiny" in card and report["input_sha256"] in card
    assert f"rows in {report['rows_in']}, kept {report['rows_kept']}" in card
    assert f"| 1 | {sft['epochs'][0]['train_loss']:.4f} | {sft['epochs'][0]['val_loss']:.4f} |" in card
    assert f"**{decision['action'].upper()}**" in card and decision["reasons"][0] in card
    assert "| this model |" in card and "judge health:" in card and "calibration" in card


@pytest.mark.model
def test_export_refuses_a_run_without_training_and_an_existing_folder(bf16_run, tmp_path, sftjudge_home):
    from sftjudge.export.merge import export_run

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    with pytest.raises(ModelError, match="sft stage has not finished"):
        export_run(untrained, tmp_path / "x", sftjudge_home)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ModelError, match="exists"):
        export_run(bf16_run, tmp_path / "taken", sftjudge_home)


@pytest.mark.model
def test_sftjudge_export_by_run_and_as_champion(bf16_run, tmp_path, capsys, sftjudge_home):
    runs_dir = str(bf16_run.parent)
    assert main(["export", "exp", str(tmp_path / "by-id"), "--runs-dir", runs_dir, "--dtype", "fp32"]) == 0
    assert json.loads((tmp_path / "by-id" / "sftjudge-export.json").read_text())["dtype"] == "fp32"
    empty = tmp_path / "no-runs"
    empty.mkdir()
    assert main(["export", "--champion", str(tmp_path / "none"), "--runs-dir", str(empty)]) == 2
    assert "no champion" in capsys.readouterr().err
    if json.loads((bf16_run / files.DECISION).read_text())["action"] != "promote":
        assert main(["promote", "exported", "--runs-dir", runs_dir]) == 0  # by hand, recorded as manual
    assert main(["export", "--champion", str(tmp_path / "champion"), "--runs-dir", runs_dir]) == 0
    assert json.loads((tmp_path / "champion" / "sftjudge-export.json").read_text())["run_id"] == "exported"
