"""What a model stage used and whether it handed the GPU back: recorded in the manifest for every model stage.

On a GPU worker the generate stage's vLLM engine and the judge stage's models must be gone before the next stage
loads its own; a stage that leaves memory in use makes the next one fail with out-of-memory for no visible reason.
So each model stage records the device's free memory before and after it ran (device-wide, so an engine in a child
process counts too) and warns when more than HANDBACK_SLACK stayed taken. On the CPU it records the process's peak
resident memory so far beside the plan, which bench/plan.py compares properly, one stage per process.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
from collections.abc import Callable
from typing import Any

HANDBACK_SLACK = 2**30  # allocator caches and CUDA context growth stay below this
log = logging.getLogger("sftjudge")


def device_free() -> int | None:
    """Free bytes on this process's GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info()[0])


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def handback(stage: str, before: int | None, after: int | None) -> str | None:
    """A warning when the stage left more than HANDBACK_SLACK of the GPU in use, else None.

    >>> handback("generate", 80 * 2**30, 79.5 * 2**30) is None
    True
    >>> handback("generate", 80 * 2**30, 60 * 2**30)
    'generate left 20.0 GiB of GPU memory in use after it finished: an engine was not shut down'
    """
    if before is None or after is None or before - after <= HANDBACK_SLACK:
        return None
    return (f"{stage} left {(before - after) / 2**30:.1f} GiB of GPU memory in use after it finished: an engine was "
            f"not shut down")


class DevicePeak:
    """The least free memory the device had while the block ran, read from the driver every `interval_s` in a
    thread: device-wide, so a vLLM server in another process counts, which torch's own peak statistics miss.

    >>> readings = iter([10, 4, 7])
    >>> with DevicePeak(read=lambda: next(readings, 7), interval_s=0.001) as peak:
    ...     import time; time.sleep(0.05)
    >>> peak.least_free
    4
    """

    def __init__(self, read: Callable[[], int] | None = None, interval_s: float = 0.25):
        self.read = read or _driver_free
        self.interval_s = interval_s
        self.least_free: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="device-peak", daemon=True)

    def _watch(self) -> None:
        while True:
            try:
                free = self.read()
            except Exception:  # noqa: BLE001 - a failed reading only loses a sample
                free = None
            if free is not None:
                self.least_free = free if self.least_free is None else min(self.least_free, free)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> DevicePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _driver_free() -> int:
    import torch

    return int(torch.cuda.mem_get_info()[0])


def stage_memory(stage: str, planned: int | None, before: int | None,
                 peak: DevicePeak | None = None) -> dict[str, Any]:
    """The manifest's memory record of a stage that just finished (see the module docstring): on a GPU the free
    memory before and after, what it handed back, and the most it had in use at once beyond what was in use
    before it started (`peak`)."""
    after = device_free()
    record: dict[str, Any] = {"planned_bytes": planned}
    if before is not None:
        record |= {"gpu_free_before": before, "gpu_free_after": after}
        if peak is not None and peak.least_free is not None:
            record["gpu_peak_used"] = max(0, before - peak.least_free)
        warning = handback(stage, before, after)
        if warning:
            log.warning(warning)
            record["warning"] = warning
    else:
        record["peak_rss_bytes"] = peak_rss()
    return record
