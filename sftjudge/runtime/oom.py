"""Out-of-memory recovery: retry the same work with half the batch instead of failing the run."""

from __future__ import annotations

import gc
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
            _free_memory()
            log(f"out of memory at batch size {size}; retrying with {size // 2}")
            size //= 2


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
