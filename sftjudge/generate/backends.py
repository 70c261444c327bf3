"""Answer generation behind one `Generator` protocol: batched transformers (CPU or GPU) or vLLM (GPU worker).

Prompts are rendered with the same chat template the checkpoint was trained with; a fingerprint mismatch is
refused rather than silently evaluating the model on a format it never saw (generate/loading.py). Caching and
resuming live in generate/cache.py; this module only turns prompts into generations.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sftjudge.config import RunConfig
from sftjudge.curate.rows import Example
from sftjudge.models.chat import render_prompt
from sftjudge.models.fingerprint import VLLM_DTYPE, engine_id


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings: greedy when temperature is 0, else sampling seeded by `seed`.

    `stop` strings end an answer early; the answer is cut before the first one and its finish reason is "stop".
    """

    max_new_tokens: int  # the configured limit (generate.max_new_tokens); there is no second default here
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self):
        # Configs hand over lists; a tuple keeps the dataclass hashable and its JSON form stable.
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    def to_json(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed,
                "stop": list(self.stop)}


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token or a stop string) or "length" (hit max_new_tokens)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Generator(Protocol):
    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]: ...


@dataclass(frozen=True, kw_only=True)
class Engine:
    """How a model is run to answer prompts: backend, dtype, batching and vLLM's placement settings."""

    backend: str  # "transformers" or "vllm"
    precision: str  # "auto", "fp32" or "bf16"
    batch_size: int
    trust_remote_code: bool
    tensor_parallel_size: int
    gpu_memory_utilization: float
    # vLLM sizes its key/value cache for this many tokens per sequence; left to vLLM it is the model's own context
    # (128k for many), which does not fit a 24-48 GB card beside the weights and fails the engine's start.
    max_model_len: int | None = None

    @classmethod
    def for_student(cls, config: RunConfig) -> Engine:
        """The student's engine in the generate stage (its dtype follows sft.precision, as in training)."""
        gen = config.generate
        return cls(backend=gen.backend, precision=config.sft.precision, batch_size=gen.batch_size,
                   trust_remote_code=config.sft.trust_remote_code, tensor_parallel_size=gen.tensor_parallel_size,
                   gpu_memory_utilization=gen.gpu_memory_utilization, max_model_len=config.student_context_tokens)

    @property
    def chunk_size(self) -> int:
        """Prompts handed to the engine per call: one batch for transformers; for vLLM, which batches continuously
        (within one call, or across the requests in flight to a server), enough to keep it full."""
        return self.batch_size if self.backend == "transformers" else max(self.batch_size, 256)

    @property
    def id(self) -> str:
        """What besides the weights decides the numbers (see `engine_id`)."""
        return engine_id(self.backend, self.precision)

    def vllm_kwargs(self) -> dict[str, Any]:
        kwargs = {"tensor_parallel_size": self.tensor_parallel_size,
                  "gpu_memory_utilization": self.gpu_memory_utilization, "dtype": VLLM_DTYPE[self.precision]}
        return kwargs | ({"max_model_len": self.max_model_len} if self.max_model_len else {})


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found.

    >>> cut_at_stop("a: 1\\nb: 2", ("\\n",))
    ('a: 1', True)
    >>> cut_at_stop("abc", ("x", "y"))
    ('abc', False)
    """
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class _StopOnStrings:
    """A transformers stopping criterion that looks at the generated part only, per row.

    transformers' own `stop_strings` also matches across the prompt/answer boundary (a prompt ending in "\\n"
    stops at the first generated "\\n" for stop "\\n\\n"), which vLLM never does; the two backends must agree.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class TransformersGenerator:
    """Batched `model.generate` with left padding and length-sorted batches (little compute spent on padding)."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        """One Generation per prompt, in the order given, whatever order the batches ran in."""
        from sftjudge.runtime.progress import progress

        tok = self.tokenizer
        tok.padding_side = "left"
        lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: list[Generation | None] = [None] * len(prompts)
        # A caller feeding one batch at a time (the resumable cache) shows its own bar; one per batch is noise.
        bar = progress(total=len(prompts), desc="generate", unit="answer", disable=len(prompts) <= self.batch_size)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, gen in zip(idx, self._generate_batch([prompts[i] for i in idx], params)):
                results[i] = gen
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    def _generate_batch(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        started = time.time()
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        width = enc["input_ids"].shape[1]
        sampling = params.temperature > 0
        if sampling:
            # Seeded by the batch's content, not once per call: a resumed run that regenerates the same batch
            # draws the same samples, and batches of one run do not share one noise sequence.
            torch.manual_seed(_batch_seed(params.seed, prompts))
        stopping = StoppingCriteriaList([_StopOnStrings(tok, params.stop, width)]) if params.stop else None
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=params.max_new_tokens, do_sample=sampling,
                temperature=params.temperature if sampling else None, top_p=None, top_k=None,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, stopping_criteria=stopping,
            )
        seconds = (time.time() - started) / len(prompts)
        return [self._to_generation(row, int(sum(mask)), params.stop, seconds)
                for row, mask in zip(out[:, width:].tolist(), enc["attention_mask"].tolist())]

    def _to_generation(self, row: list[int], prompt_tokens: int, stop: tuple[str, ...],
                       seconds: float) -> Generation:
        tok = self.tokenizer
        end = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        text = tok.decode(row[:end], skip_special_tokens=True)
        if stop and cut_at_stop(text, stop)[1]:
            # Count tokens up to the one that completed the stop string, as vLLM does; rows that stopped early
            # are padded after it (often with the end-of-turn token), and the padding is not counted.
            n = next(k for k in range(1, end + 1)
                     if cut_at_stop(tok.decode(row[:k], skip_special_tokens=True), stop)[1])
            text = cut_at_stop(tok.decode(row[:n], skip_special_tokens=True), stop)[0]
            return Generation(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=n,
                              finish_reason="stop", seconds=seconds)
        if end < len(row):
            # The end-of-turn token was generated, so it counts, as in vLLM (checked by scripts/vllm_check.py).
            return Generation(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=end + 1,
                              finish_reason="stop", seconds=seconds)
        return Generation(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=end,
                          finish_reason="length", seconds=seconds)


def _batch_seed(seed: int, prompts: list[str]) -> int:
    digest = hashlib.sha256(json.dumps([seed, sorted(prompts)]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


class VLLMGenerator:
    """vLLM: the base model with the LoRA adapter applied per request (or a merged / full model).

    vllm is imported here, lazily, so CPU installs never need it (`pip install sftjudge[gpu]` on GPU workers).
    With `tokenizer`, prompts go to vLLM as token ids encoded without special tokens, exactly as the
    transformers backend encodes them (vLLM would otherwise add a BOS some templates already contain).
    `engine_kwargs` pass through to `vllm.LLM` (tensor_parallel_size, gpu_memory_utilization, dtype, max_lora_rank,
    max_model_len, enforce_eager, ...).
    """

    def __init__(self, base_model: str, adapter: str | None = None, *, engine_kwargs: dict[str, Any] | None = None,
                 tokenizer=None, llm=None):
        if llm is None:
            from vllm import LLM

            kwargs = dict(engine_kwargs or {})
            if adapter:
                kwargs = {"enable_lora": True, "max_lora_rank": 64} | kwargs
            llm = LLM(model=base_model, **kwargs)
        self.llm = llm
        self.adapter = adapter
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        """One Generation per prompt, in order; stop strings are cut by vLLM (not included in the text)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if self.llm is None:
            raise RuntimeError("this VLLMGenerator was closed; build a new one to generate again")
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  seed=params.seed if params.temperature > 0 else None,
                                  stop=list(params.stop) or None)
        lora = LoRARequest("sftjudge", 1, self.adapter) if self.adapter else None
        inputs: list[Any] = prompts
        if self.tokenizer is not None:
            inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]}
                      for p in prompts]
        started = time.time()
        outputs = self.llm.generate(inputs, sampling, lora_request=lora)
        seconds = (time.time() - started) / max(len(prompts), 1)
        return [
            Generation(text=o.outputs[0].text.strip(), prompt_tokens=len(o.prompt_token_ids),
                       completion_tokens=len(o.outputs[0].token_ids),
                       finish_reason="length" if o.outputs[0].finish_reason == "length" else "stop", seconds=seconds)
            for o in outputs
        ]

    def close(self) -> None:
        """Shut the engine down and free the GPU, so the judge can load after generation."""
        import contextlib
        import gc

        llm, self.llm = self.llm, None
        if llm is None:
            return
        # vLLM's V1 engine runs in a child process that holds the GPU; dropping the reference alone can leave it
        # alive until interpreter exit. Each step is best effort: the names moved between vLLM versions.
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        del llm
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class LazyGenerator:
    """A Generator built on first use and closed (GPU freed) by `close`: a fully cached stage loads no model."""

    def __init__(self, build: Callable[[], Generator]):
        self.build = build
        self.generator: Generator | None = None

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        if self.generator is None:
            self.generator = self.build()
        return self.generator.generate(prompts, params)

    def close(self) -> None:
        generator, self.generator = self.generator, None
        if generator is not None and hasattr(generator, "close"):
            generator.close()


def generation_params(config) -> GenerationParams:
    """GenerationParams from a GenerateConfig; `stop` is read only if the config has that field."""
    return GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            seed=config.seed, stop=tuple(getattr(config, "stop", ()) or ()))


def prompts_for(tokenizer, rows: list[Example]) -> list[str]:
    return [render_prompt(tokenizer, row.prompt_messages) for row in rows]


def answer_record(row: Example, prompt: str, generation: dict[str, Any], model_label: str) -> dict[str, Any]:
    """One generations.jsonl record: the row's id, prompt and reference beside the generated answer."""
    return {"id": row.id, "model": model_label, "instruction": row.instruction, "reference": row.completion,
            "prompt": prompt, **generation}


def generate_answers(generator: Generator, tokenizer, rows: list[Example], params: GenerationParams,
                     model_label: str) -> list[dict[str, Any]]:
    """One record per test row: id, prompt, reference, generated answer and its token counts (no cache)."""
    prompts = prompts_for(tokenizer, rows)
    generations = generator.generate(prompts, params)
    return [answer_record(row, prompt, gen.to_json(), model_label)
            for row, prompt, gen in zip(rows, prompts, generations)]
