"""A model's shape from its config.json alone: parameter counts (exact, from a model built on the meta device,
which allocates nothing) and the dimensions that size activations and key/value caches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    name: str
    params: int  # unique parameters (tied embeddings counted once)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_params: int  # adapter parameters for the configured target modules and rank (0 when none match)
    lora_inputs: int = 0  # per layer: summed input widths of the adapted modules (their dropout copies are kept)
    embedding_params: int = 0  # input embeddings and output layer (once when tied): bitsandbytes leaves them bf16

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token across every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def shape_from_config(name: str, config, *, lora_r: int = 0, lora_targets: tuple[str, ...] = ()) -> ModelShape:
    """The shape of a transformers config (PretrainedConfig); LoRA parameters counted for `lora_targets` at rank
    `lora_r` over the model's linear layers whose names end in a target."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    ends = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    embedding = sum(p.numel() for p in {id(p): p for m in ends for p in m.parameters()}.values())
    lora = inputs = 0
    if lora_r and lora_targets:
        for name_, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name_.rsplit(".", 1)[-1] in lora_targets:
                lora += lora_r * (module.in_features + module.out_features)
                inputs += module.in_features
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return ModelShape(name=name, params=params, layers=text.num_hidden_layers, hidden=text.hidden_size,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), heads=heads,
                      kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                      head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                      vocab=text.vocab_size, lora_params=lora, lora_inputs=inputs // text.num_hidden_layers,
                      embedding_params=embedding)


def model_shape(ref: str, home, *, trust_remote_code: bool = False, lora_r: int = 0,
                lora_targets: tuple[str, ...] = (), prepare: bool = True) -> ModelShape | None:
    """The shape of a model field (embedded name, folder or hub id), read from its config.json only.

    With `prepare=False` an embedded model not yet prepared gives None instead of being prepared (a stage's
    check does not do the stage's work). A config that cannot be read is a ModelError saying what to do.
    """
    from transformers import AutoConfig

    from sftjudge.models.embedded import EMBEDDED, TINY, is_prepared, load_error_hint, resolve_model

    if not prepare and (ref in EMBEDDED or ref == TINY) and not is_prepared(ref, home):
        return None
    path = resolve_model(ref, home)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error_hint(ref, exc) from exc
    return shape_from_config(ref, config, lora_r=lora_r, lora_targets=lora_targets)
