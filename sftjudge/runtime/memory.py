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


def stage_memory(stage: str, planned: int | None, before: int | None) -> dict[str, Any]:
    """The manifest's memory record of a stage that just finished (see the module docstring)."""
    after = device_free()
    record: dict[str, Any] = {"planned_bytes": planned}
    if before is not None:
        record |= {"gpu_free_before": before, "gpu_free_after": after}
        warning = handback(stage, before, after)
        if warning:
            log.warning(warning)
            record["warning"] = warning
    else:
        record["peak_rss_bytes"] = peak_rss()
    return record
