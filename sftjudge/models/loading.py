"""Loading a causal LM and its tokenizer from a local directory or hub id: safetensors only, pad token set."""

from __future__ import annotations


def load_causal_lm(path: str, *, dtype_name: str = "float32", trust_remote_code: bool = False,
                   quantization_config=None):
    """Load tokenizer + model from a local directory or hub id; safetensors only (no pickle execution).

    `quantization_config` (a transformers BitsAndBytesConfig) loads the weights quantised, on the CUDA card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftjudge.models.embedded import load_error_hint

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        quantized = {"quantization_config": quantization_config, "device_map": {"": torch.cuda.current_device()}} \
            if quantization_config is not None else {}
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype_name), use_safetensors=True, trust_remote_code=trust_remote_code,
            **quantized)
    except (OSError, ValueError) as exc:
        raise load_error_hint(path, exc) from exc
    return model, with_pad(tokenizer)


def with_pad(tokenizer):
    """The tokenizer with a pad token: its end-of-sequence token when it has none (batching needs one)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
