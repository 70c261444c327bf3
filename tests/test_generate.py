from types import SimpleNamespace

import pytest

from helpers import example
from sftjudge.chat import TemplateError
from sftjudge.generate import (GenerationParams, TransformersGenerator, VLLMGenerator, check_template,
                               generate_answers, load_finetuned)
from sftjudge.checkpoints import save_checkpoint
from sftjudge.sft import load_causal_lm

pytestmark = pytest.mark.model


def test_batched_generation_keeps_input_order_and_counts_tokens(tiny_model):
    model, tok = tiny_model
    prompts = [tok.apply_chat_template([{"role": "user", "content": "x" * n}], tokenize=False,
                                       add_generation_prompt=True) for n in (30, 1, 12, 5, 20)]
    gen = TransformersGenerator(model, tok, batch_size=2)
    batched = gen.generate(prompts, GenerationParams(max_new_tokens=5))
    single = [TransformersGenerator(model, tok, batch_size=1).generate([p], GenerationParams(max_new_tokens=5))[0]
              for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]  # left padding does not change greedy output
    assert [g.prompt_tokens for g in batched] == [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert all(g.completion_tokens <= 5 and g.finish_reason in ("stop", "length") for g in batched)


def test_generate_answers_records_reference_and_answer(tiny_model):
    model, tok = tiny_model
    rows = [example(i, f"q{i}", f"a{i}") for i in range(3)]
    records = generate_answers(TransformersGenerator(model, tok), tok, rows, GenerationParams(max_new_tokens=3), "m")
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert [r["reference"] for r in records] == ["a0", "a1", "a2"]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in records)


def test_template_mismatch_is_refused(tiny_model_dir, tmp_path):
    model, tok = load_causal_lm(str(tiny_model_dir))
    ckpt = save_checkpoint(model, tok, tmp_path / "epoch-1", epoch=1, method="full", fingerprint="0000000000000000")
    with pytest.raises(TemplateError, match="chat template mismatch"):
        load_finetuned(str(tiny_model_dir), ckpt)
    with pytest.raises(TemplateError):
        check_template(tok, "ffff", ckpt)


class FakeLLM:
    """Stands in for vllm.LLM: records what it was asked and answers like vLLM's RequestOutput."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling, lora_request=None):
        self.calls.append((prompts, sampling, lora_request))
        return [SimpleNamespace(prompt_token_ids=[1] * len(p),
                                outputs=[SimpleNamespace(text=f" echo:{p} ", token_ids=[1, 2, 3],
                                                         finish_reason="length" if "long" in p else "stop")])
                for p in prompts]


def test_vllm_backend_maps_outputs_and_passes_the_adapter(monkeypatch):
    import sys

    captured = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            captured["sampling"] = kwargs

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.lora_id, self.path = name, lora_id, path

    fake_vllm = SimpleNamespace(SamplingParams=SamplingParams)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.lora.request", SimpleNamespace(LoRARequest=LoRARequest))
    llm = FakeLLM()
    gen = VLLMGenerator("base", adapter="/ckpt/epoch-2", llm=llm)
    out = gen.generate(["short", "long one"], GenerationParams(max_new_tokens=7))
    assert [g.text for g in out] == ["echo:short", "echo:long one"]
    assert [g.finish_reason for g in out] == ["stop", "length"]
    assert captured["sampling"]["max_tokens"] == 7 and captured["sampling"]["temperature"] == 0.0
    assert llm.calls[0][2].path == "/ckpt/epoch-2"


@pytest.mark.gpu
def test_vllm_backend_on_a_real_gpu(tiny_model_dir):
    gen = VLLMGenerator(str(tiny_model_dir))
    out = gen.generate(["hello"], GenerationParams(max_new_tokens=4))
    assert len(out) == 1 and out[0].completion_tokens <= 4
    gen.close()
