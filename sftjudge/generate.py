"""Answer generation behind one `Generator` protocol: batched transformers (CPU or GPU) or vLLM (GPU worker).

Prompts are rendered with the same chat template the checkpoint was trained with; a fingerprint mismatch is
refused rather than silently evaluating the model on a format it never saw.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from sftjudge.chat import TemplateError, render_prompt, template_fingerprint
from sftjudge.device import device, use_bf16
from sftjudge.rows import Example


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 96
    temperature: float = 0.0
    seed: int = 0


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Generator(Protocol):
    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]: ...


class TransformersGenerator:
    """Batched `model.generate` with left padding and length-sorted batches (little compute spent on padding)."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        import torch
        from sftjudge.progress import progress

        tok = self.tokenizer
        tok.padding_side = "left"
        lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: list[Generation | None] = [None] * len(prompts)
        if params.temperature > 0:
            torch.manual_seed(params.seed)
        bar = progress(total=len(prompts), desc="generate", unit="answer")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, gen in zip(idx, self._generate_batch([prompts[i] for i in idx], params)):
                results[i] = gen
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    def _generate_batch(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        import torch

        tok = self.tokenizer
        started = time.time()
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        sampling = params.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=params.max_new_tokens, do_sample=sampling,
                temperature=params.temperature if sampling else None, top_p=None, top_k=None,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        seconds = (time.time() - started) / len(prompts)
        generations = []
        for row, prompt_mask in zip(new_tokens.tolist(), enc["attention_mask"].tolist()):
            stopped = tok.eos_token_id in row
            kept = row[: row.index(tok.eos_token_id)] if stopped else row
            generations.append(Generation(
                text=tok.decode(kept, skip_special_tokens=True).strip(), prompt_tokens=int(sum(prompt_mask)),
                completion_tokens=len(kept), finish_reason="stop" if stopped else "length", seconds=seconds,
            ))
        return generations


class VLLMGenerator:
    """vLLM on a GPU worker: the base model with the LoRA adapter applied per request (or a merged model).

    vllm is imported here, lazily, so CPU installs never need it (`pip install sftjudge[gpu]` on GPU workers).
    """

    def __init__(self, base_model: str, adapter: str | None = None, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_lora_rank: int = 64, llm=None):
        if llm is None:
            from vllm import LLM

            llm = LLM(model=base_model, enable_lora=adapter is not None, max_lora_rank=max_lora_rank,
                      tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization)
        self.llm = llm
        self.adapter = adapter

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  seed=params.seed if params.temperature > 0 else None)
        lora = LoRARequest("sftjudge", 1, self.adapter) if self.adapter else None
        started = time.time()
        outputs = self.llm.generate(prompts, sampling, lora_request=lora)
        seconds = (time.time() - started) / max(len(prompts), 1)
        return [
            Generation(text=o.outputs[0].text.strip(), prompt_tokens=len(o.prompt_token_ids),
                       completion_tokens=len(o.outputs[0].token_ids),
                       finish_reason="length" if o.outputs[0].finish_reason == "length" else "stop", seconds=seconds)
            for o in outputs
        ]

    def close(self) -> None:
        """Free the GPU so the judge can load after generation."""
        import gc

        del self.llm
        gc.collect()
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort cleanup on a machine without CUDA
            pass


def load_finetuned(base_path: str, checkpoint: Path, *, precision: str = "auto", trust_remote_code: bool = False):
    """Base model + checkpoint (LoRA adapter merged in, or full weights), in bf16 when fast here.

    Raises TemplateError when the checkpoint's tokenizer renders a different chat template than at training.
    """
    import torch

    from sftjudge.checkpoints import checkpoint_meta
    from sftjudge.sft import load_causal_lm

    meta = checkpoint_meta(checkpoint)
    if meta["method"] == "full":
        model, tokenizer = load_causal_lm(str(checkpoint), trust_remote_code=trust_remote_code)
    else:
        from peft import PeftModel

        model, _ = load_causal_lm(base_path, trust_remote_code=trust_remote_code)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    check_template(tokenizer, meta["template_fingerprint"], checkpoint)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if use_bf16(precision) else torch.float32
    return model.to(device=device(), dtype=dtype), tokenizer


def make_generator(backend: str, base_path: str, checkpoint: Path, *, batch_size: int, precision: str,
                   trust_remote_code: bool) -> tuple[Generator, Any]:
    """Build the configured backend for a checkpoint; returns (generator, tokenizer used to render prompts)."""
    from sftjudge.checkpoints import checkpoint_meta

    if backend == "vllm":
        from transformers import AutoTokenizer

        meta = checkpoint_meta(checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        check_template(tokenizer, meta["template_fingerprint"], checkpoint)
        if meta["method"] == "full":
            return VLLMGenerator(str(checkpoint)), tokenizer
        return VLLMGenerator(base_path, adapter=str(checkpoint)), tokenizer
    model, tokenizer = load_finetuned(base_path, checkpoint, precision=precision,
                                      trust_remote_code=trust_remote_code)
    return TransformersGenerator(model, tokenizer, batch_size=batch_size), tokenizer


def check_template(tokenizer, expected: str, checkpoint: Path) -> None:
    actual = template_fingerprint(tokenizer)
    if actual != expected:
        raise TemplateError(
            f"chat template mismatch for {checkpoint}: trained with fingerprint {expected}, the tokenizer now "
            f"renders {actual}. Generating with a different template would evaluate a format the model never "
            f"saw; use the tokenizer saved in the checkpoint."
        )


def prompts_for(tokenizer, rows: list[Example]) -> list[str]:
    return [render_prompt(tokenizer, row.prompt_messages) for row in rows]


def generate_answers(generator: Generator, tokenizer, rows: list[Example], params: GenerationParams,
                     model_label: str) -> list[dict[str, Any]]:
    """One record per test row: id, prompt, reference, generated answer and its token counts."""
    prompts = prompts_for(tokenizer, rows)
    generations = generator.generate(prompts, params)
    return [
        {"id": row.id, "model": model_label, "instruction": row.instruction, "reference": row.completion,
         "prompt": prompt, **gen.to_json()}
        for row, prompt, gen in zip(rows, prompts, generations)
    ]
