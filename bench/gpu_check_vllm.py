"""bench/gpu_check.py's vLLM section: the served engine as the generate stage runs it.

A randomly initialised model of the shape (its vocabulary cut to the tiny tokenizer's 400 tokens, so every
generated id decodes; the output layer is then cheaper than the real model's) is saved with a random LoRA adapter,
served by `vllm serve` from vLLM's own environment (vllm.python / $SFTJUDGE_VLLM_PYTHON) through the project's
`start_server`, and asked through `ServedGenerator` for the adapter's and the base model's answers, as the generate
stage asks. Records the server's start-up seconds, new tokens/s for each name, and (on a GPU) what the card had
free before the start and after the stop.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def save_model(shape_config: dict, tokenizer, folder: Path) -> Path:
    """A random bf16 model of the shape, 400-token vocabulary, with a random LoRA adapter in folder/adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**(shape_config | {"vocab_size": 400}), max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    adapted = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    adapted.save_pretrained(folder / "adapter")
    return folder


def vllm_section(shape_config: dict, tokenizer, prompts: int, new_tokens: int, cuda: bool) -> dict:
    from sftjudge.errors import ConfigError
    from sftjudge.generate.backends import GenerationParams
    from sftjudge.generate.loading import max_lora_rank
    from sftjudge.generate.served import ServedGenerator
    from sftjudge.runtime.served_client import ServedClient
    from sftjudge.runtime.vllm_server import ServeSettings, start_server, vllm_python

    try:
        python = vllm_python(None)
    except ConfigError as exc:
        return {"skipped": str(exc)}
    texts = [f"Extract the support ticket fields as JSON. Message {i}: my router stopped working." * 4
             for i in range(prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(shape_config, tokenizer, Path(tmp))
        settings = ServeSettings(name="base", dtype="bfloat16" if cuda else "float32", max_model_len=2048,
                                 gpu_memory_utilization=0.5 if cuda else None, startup_s=900,
                                 lora_modules=(("student", str(folder / "adapter")),),
                                 max_lora_rank=max_lora_rank(folder / "adapter"))
        started = time.perf_counter()
        server = start_server(python, folder / "base", settings, log=Path(tmp) / "vllm.log")
        out: dict = {"startup_s": round(time.perf_counter() - started, 1)}
        try:
            client = ServedClient(base_url=server.url, model="base", concurrency=64, timeout_s=600,
                                  service="vLLM server", setting=str(python))
            for name in ("student", "base"):
                generator = ServedGenerator(lambda: client, lambda name=name: name, tokenizer)
                began = time.perf_counter()
                answers = generator.generate(texts, GenerationParams(max_new_tokens=new_tokens))
                made = sum(a.completion_tokens for a in answers)
                out[name] = {"prompts": prompts, "new_tokens": made,
                             "new_tokens_per_s": round(made / (time.perf_counter() - began), 1)}
            client.close()
        finally:
            server.stop()
    return out
