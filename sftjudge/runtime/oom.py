"""Out-of-memory recovery: retry the same work with half the batch instead of failing the run."""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, CPU allocator failures and MemoryError all count.

    >>> is_out_of_memory(MemoryError())
    True
    >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    >>> is_out_of_memory(ValueError("bad row"))
    False
    """
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def with_smaller_batch_on_oom(work: Callable[[int], T], batch_size: int, *,
                              log: Callable[[str], None] = print) -> T:
    """Call work(batch_size); on out-of-memory free what can be freed and retry with half, down to 1.

    >>> calls = []
    >>> def work(size):
    ...     calls.append(size)
    ...     if size > 2:
    ...         raise MemoryError()
    ...     return size
    >>> with_smaller_batch_on_oom(work, 8, log=lambda m: None), calls
    (2, [8, 4, 2])
    """
    size = batch_size
    while True:
        try:
            return work(size)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
            if not is_out_of_memory(exc) or size <= 1:
                raise
            log(f"out of memory at batch size {size}; retrying with {size // 2}")
            # The traceback holds every frame of the failed attempt, and with them its model, trainer and
            # optimizer: clear their locals now, and free only once the except block (and `exc`) is gone.
            traceback.clear_frames(exc.__traceback__)
        free_memory()
        size //= 2


def free_memory() -> None:
    """Collect unreachable objects (models sit in reference cycles: accelerate rebinds `forward` to the model) and
    hand the CUDA allocator's cached blocks back, so the next load or another process finds the memory free."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
