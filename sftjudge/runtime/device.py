"""Device and precision choices, decided once per stage from what the hardware can do."""

from __future__ import annotations

import contextlib
from pathlib import Path


def device() -> str:
    import torch

    # Under `accelerate launch` "cuda" is this process's own card: joining the process group made it current.
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported() -> bool:
    """True when bf16 math is fast here: a CUDA card with bf16, or a CPU with avx512_bf16/AMX.

    Without those instructions CPU bf16 is emulated and slower than fp32, so 'auto' must not pick it.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and bf16_supported())


def compute_dtype(precision: str) -> str:
    """The torch dtype (attribute name) a model answers or judges in under a precision setting: fp16 stays fp16
    (cards without bf16, where the student also trained in fp16), bf16 where it is fast, else float32.

    >>> compute_dtype("fp16"), compute_dtype("bf16"), compute_dtype("fp32")
    ('float16', 'bfloat16', 'float32')
    """
    if precision == "fp16":
        return "float16"
    return "bfloat16" if use_bf16(precision) else "float32"


def autocast(enabled: bool):
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device(), dtype=torch.bfloat16)
