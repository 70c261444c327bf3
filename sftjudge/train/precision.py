"""The student's precision and quantisation: what the base weights are held in, checked before anything loads.

LoRA trains small adapters on frozen base weights, so the frozen weights need not be float32: held in bf16 (fp16
on cards without bf16) a 7B base takes ~14 GB instead of ~28; quantised by bitsandbytes (QLoRA) ~4-5 GB. The
adapters stay float32 (peft keeps them so) and the steps run under autocast. A full fine-tune keeps float32 weights
(the optimizer updates them; bf16 weights would lose small updates) and autocasts the compute.
"""

from __future__ import annotations

from sftjudge.config import SFTConfig
from sftjudge.errors import ConfigError
from sftjudge.runtime.device import use_bf16


def check_engine(sft: SFTConfig) -> None:
    """Refuse settings this machine cannot train with, before any model is loaded.

    >>> check_engine(SFTConfig(precision="fp32"))
    """
    import torch

    cuda = torch.cuda.is_available()
    if sft.quantization and not cuda:
        raise ConfigError(f"sft.quantization: {sft.quantization} (QLoRA) needs a CUDA card and bitsandbytes "
                          f"(`pip install sftjudge[gpu]` on a GPU worker); on this machine set sft.quantization: null "
                          f"(LoRA on bf16 or fp32 base weights)")
    if sft.precision == "fp16" and not cuda:
        raise ConfigError("sft.precision: fp16 is for CUDA cards without bf16; on this machine use auto, bf16 or fp32")
    if sft.quantization:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"sft.quantization: {sft.quantization} needs bitsandbytes: `pip install "
                              f"sftjudge[gpu]`") from exc


def student_dtype(sft: SFTConfig, bf16: bool | None = None) -> str:
    """The dtype to load the student's weights in (torch attribute name); `bf16`: whether training runs in bf16
    (default: whether it does on this machine; the memory planner passes its target's).

    >>> student_dtype(SFTConfig(method="full", precision="bf16")), student_dtype(SFTConfig(precision="bf16"))
    ('float32', 'bfloat16')
    """
    if sft.method != "lora":
        return "float32"
    if sft.precision == "fp16":
        return "float16"
    return "bfloat16" if (use_bf16(sft.precision) if bf16 is None else bf16) else "float32"


def quantization_config(sft: SFTConfig):
    """The BitsAndBytesConfig for sft.quantization (None without it): NF4 with double quantisation and bf16
    compute for 4bit, LLM.int8 for 8bit."""
    if not sft.quantization:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if sft.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.float16 if sft.precision == "fp16" else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def base_weights_precision(model, sft: SFTConfig) -> bool:
    """Cast a LoRA student's frozen base weights to the training precision (a no-op when loaded so); return
    whether the steps and loss measurements autocast to bf16."""
    import torch

    check_engine(sft)
    dtype = getattr(torch, student_dtype(sft))
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if not quantized and model.dtype != dtype:
        model.to(dtype)
    return use_bf16(sft.precision)
