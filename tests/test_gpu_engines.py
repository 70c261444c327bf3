"""Engines as a GPU worker builds them (issue 25, items 3, 6, 7 and 12), checked on the CPU against stand-ins.

Each test pins one failure that reading the code against the pinned libraries found before any GPU ran it.
"""

from __future__ import annotations

import pytest

from sftjudge.config import RunConfig
from sftjudge.generate.backends import Engine


def _engine(backend: str, precision: str, **kwargs) -> Engine:
    return Engine(backend=backend, precision=precision, batch_size=4, trust_remote_code=False,
                  tensor_parallel_size=1, gpu_memory_utilization=0.85, **kwargs)


@pytest.mark.model
def test_an_fp16_student_answers_in_fp16_on_either_backend(tiny_model_dir):
    import torch

    from sftjudge.generate.loading import _placed
    from sftjudge.models.loading import load_causal_lm

    # vLLM's dtype table had no fp16: KeyError 'fp16' as the generate stage started
    assert _engine("vllm", "fp16").vllm_kwargs()["dtype"] == "float16"
    assert _engine("vllm", "fp16").id == "vllm/float16"
    # transformers placed an fp16-trained student on the card in float32: twice the memory, other numbers
    model, _ = load_causal_lm(str(tiny_model_dir))
    assert _placed(model, "fp16").dtype == torch.float16
    assert _engine("transformers", "fp16").id == "transformers/fp16"
    assert _engine("transformers", "fp32").id == "transformers/fp32"  # ids of existing caches unchanged


def test_a_student_engine_is_sized_for_the_run_not_the_models_own_context():
    config = RunConfig.model_validate({"generate": {"backend": "vllm", "max_new_tokens": 200},
                                       "sft": {"max_seq_len": 1024}, "regression": {"max_new_tokens": 64}})
    # left to vLLM, a 128k-context model's cache does not fit a 24-48 GB card and the engine fails to start
    assert Engine.for_student(config).vllm_kwargs()["max_model_len"] == 1024 + 200


@pytest.mark.model
def test_the_judge_engine_is_sized_for_fitted_prompts(monkeypatch, sftjudge_home, tiny_model_dir):
    import sys
    from types import SimpleNamespace

    from sftjudge.judge.model import LoadedJudge

    built = []
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=lambda model, **kwargs: built.append(kwargs)))
    config = RunConfig.model_validate({"judge": {"model": str(tiny_model_dir), "backend": "vllm",
                                                 "precision": "fp32", "max_prompt_tokens": 512},
                                       "vllm": {"engine": "in_process"}})
    LoadedJudge(config, sftjudge_home).engine
    assert built[0]["max_model_len"] == 512 + 64


@pytest.mark.model
def test_a_vllm_judge_is_a_server_in_its_own_environment_stopped_with_the_stage(tmp_path, tiny_model_dir,
                                                                                sftjudge_home, stand_in):
    import os
    import sys

    from test_engine_judge import ITEMS, judge
    from vllm_stand_in import records

    from sftjudge.judge.model import LoadedJudge

    config = RunConfig.model_validate({"judge": {"model": str(tiny_model_dir), "backend": "vllm", "precision": "fp32",
                                                 "max_prompt_tokens": 512},
                                       "vllm": {"python": sys.executable, "startup_s": 120}})
    loaded = LoadedJudge(config, sftjudge_home, log=tmp_path / "judge.log")
    assert records(stand_in) == []  # nothing starts before a judgment is needed
    judged = loaded.scorer(judge("reference-score")).score(ITEMS[:2])
    assert [j.score for j in judged] == [pytest.approx(8.22, abs=0.01)] * 2  # the stand-in's scripted reading
    started = [r for r in records(stand_in) if "argv" in r]
    argv = " ".join(started[0]["argv"])
    assert "--served-model-name judge" in argv and "--max-model-len 576" in argv and "--max-logprobs 20" in argv
    in_engine = LoadedJudge(config.model_copy(update={"vllm": config.vllm.model_copy(update={"engine": "in_process"})}),
                            sftjudge_home)
    # read by token text through the chat endpoint, not by token id in the engine: scores of their own
    assert loaded.identity(judge("reference-score")) != in_engine.identity(judge("reference-score"))
    loaded.close()
    with pytest.raises(OSError):
        os.kill(started[0]["pid"], 0)  # the server is gone: the next stage finds the card free


def test_one_training_process_on_a_host_with_several_cards_trains_on_one(monkeypatch):
    import torch

    from sftjudge.config import SFTConfig
    from sftjudge.train import engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    args = engine.training_arguments(SFTConfig(precision="fp32", batch_size=8), "/tmp/unused", world=1,
                                     steps_total=4, bf16=False, fp16=False)
    # transformers counted 4 cards and would wrap the model in nn.DataParallel: a global batch of 32, not 8
    assert (args.n_gpu, args.train_batch_size) == (1, 8)
