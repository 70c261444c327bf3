"""Loading a model to answer with: the base model alone, or with a checkpoint (LoRA merged in, or full weights),
on the configured backend, with the chat template the checkpoint was trained with (a mismatch is refused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjudge.errors import ModelError, TemplateError
from sftjudge.generate.backends import (
    Engine,
    Generator,
    TransformersGenerator,
    VLLMGenerator,
)
from sftjudge.models.chat import template_fingerprint
from sftjudge.models.loading import load_causal_lm, with_pad
from sftjudge.runtime.device import compute_dtype, device

# vLLM only accepts these LoRA ranks for `max_lora_rank`; the adapter's rank is rounded up to one of them.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(adapter: Path) -> int:
    """The adapter's rank rounded up to one vLLM accepts (in process or served)."""
    rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 64)
    return next((r for r in _VLLM_LORA_RANKS if r >= rank), rank)


def load_finetuned(base_path: str, checkpoint: Path, *, precision: str = "auto", trust_remote_code: bool = False):
    """Base model + checkpoint (LoRA adapter merged in, or full weights), in bf16 when fast here.

    Raises TemplateError when the checkpoint's tokenizer renders a different chat template than at training.
    """
    from sftjudge.train.checkpoints import checkpoint_meta

    meta = checkpoint_meta(checkpoint)
    if meta["method"] == "full":
        model, tokenizer = load_causal_lm(str(checkpoint), trust_remote_code=trust_remote_code)
    else:
        from peft import PeftModel

        # peft would fall back to a pickled adapter_model.bin; weights load from safetensors only.
        if not (Path(checkpoint) / "adapter_model.safetensors").is_file():
            raise ModelError(f"{checkpoint}: no adapter_model.safetensors; sftjudge loads adapters from "
                             f"safetensors only (a pickled .bin can run code when loaded)")
        model, _ = load_causal_lm(base_path, trust_remote_code=trust_remote_code)
        tokenizer = checkpoint_tokenizer(checkpoint)
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    check_template(tokenizer, meta["template_fingerprint"], checkpoint)
    return _placed(model, precision), with_pad(tokenizer)


def _placed(model, precision: str):
    import torch

    return model.to(device=device(), dtype=getattr(torch, compute_dtype(precision)))


def checkpoint_tokenizer(checkpoint: Path):
    """The tokenizer saved with a checkpoint, checked against the template fingerprint recorded at training.

    Cheap (no weights): the resumable stage renders prompts with it before deciding whether a model is needed.
    Raises TemplateError on a mismatch.
    """
    from transformers import AutoTokenizer

    from sftjudge.train.checkpoints import checkpoint_meta

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    check_template(tokenizer, checkpoint_meta(checkpoint)["template_fingerprint"], checkpoint)
    return with_pad(tokenizer)


def make_generator(engine: Engine, base_path: str, checkpoint: Path | None = None) -> tuple[Generator, Any]:
    """Build the engine's backend for a checkpoint, or for the base model alone when `checkpoint` is None.

    Returns (generator, tokenizer used to render prompts). Raises TemplateError on a template mismatch.
    """
    if engine.backend == "vllm":
        return _make_vllm(base_path, checkpoint, engine.vllm_kwargs())
    if checkpoint is None:
        model, tokenizer = load_causal_lm(base_path, trust_remote_code=engine.trust_remote_code)
        model = _placed(model, engine.precision)
    else:
        model, tokenizer = load_finetuned(base_path, checkpoint, precision=engine.precision,
                                          trust_remote_code=engine.trust_remote_code)
    return TransformersGenerator(model, tokenizer, batch_size=engine.batch_size), tokenizer


def _make_vllm(base_path: str, checkpoint: Path | None, engine: dict[str, Any]) -> tuple[Generator, Any]:
    from sftjudge.train.checkpoints import checkpoint_meta

    if checkpoint is None:
        from transformers import AutoTokenizer

        tokenizer = with_pad(AutoTokenizer.from_pretrained(base_path))
        return VLLMGenerator(base_path, tokenizer=tokenizer, engine_kwargs=engine), tokenizer
    tokenizer = checkpoint_tokenizer(checkpoint)
    if checkpoint_meta(checkpoint)["method"] == "full":
        return VLLMGenerator(str(checkpoint), tokenizer=tokenizer, engine_kwargs=engine), tokenizer
    return VLLMGenerator(base_path, adapter=str(checkpoint), tokenizer=tokenizer,
                         engine_kwargs=engine | {"max_lora_rank": max_lora_rank(checkpoint)}), tokenizer


def check_template(tokenizer, expected: str, checkpoint: Path) -> None:
    """Raise TemplateError unless `tokenizer` renders the chat template the checkpoint was trained with."""
    actual = template_fingerprint(tokenizer)
    if actual != expected:
        raise TemplateError(
            f"chat template mismatch for {checkpoint}: trained with fingerprint {expected}, the tokenizer now "
            f"renders {actual}. Generating with a different template would evaluate a format the model never "
            f"saw; use the tokenizer saved in the checkpoint."
        )
