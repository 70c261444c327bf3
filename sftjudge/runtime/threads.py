"""A thread budget per flow run: the cores a worker may use, shared among the runs it executes at once.

torch (and the BLAS and OpenMP under it) starts one thread per core in every process. Two flow runs on one box
then run twice as many busy threads as there are cores; OpenMP's threads spin while they wait for each other, so
each run slows far beyond the factor of two that sharing the cores should cost (measured here: a judge item took
~10x as long beside a second torch process; bench/contention.py measures it). So each run takes its share:

    threads = max(1, usable cores // runs at once on this worker)

`usable cores` honours the process's CPU affinity and a cgroup CPU quota (containers). `runs at once` comes from
SFTJUDGE_RUNS_PER_WORKER, which `deployments/setup.py --runs-per-worker N` writes into the work pools' job
templates (and which must match the `--limit N` the worker is started with); it is 1 when unset. An explicit
`threads:` in the run's config wins over the budget.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

RUNS_ENV = "SFTJUDGE_RUNS_PER_WORKER"
# Set for child processes (accelerate launch, tokenizers, BLAS in numpy), which read them when they start.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 (cpu.max) or v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None when unlimited or unknown."""
    try:
        text = (root / "cpu.max").read_text().split()  # v2: "<quota> <period>" or "max <period>"
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def runs_per_worker(environ: dict[str, str] | None = None) -> int:
    """How many flow runs this worker executes at once, from SFTJUDGE_RUNS_PER_WORKER (1 when unset).

    >>> runs_per_worker({"SFTJUDGE_RUNS_PER_WORKER": "2"}), runs_per_worker({})
    (2, 1)
    """
    value = (os.environ if environ is None else environ).get(RUNS_ENV, "").strip()
    if not value:
        return 1
    try:
        runs = int(value)
    except ValueError:
        raise ValueError(f"{RUNS_ENV}={value!r}: must be a whole number of flow runs (the worker's --limit)") from None
    if runs < 1:
        raise ValueError(f"{RUNS_ENV}={value!r}: must be at least 1")
    return runs


def thread_budget(cores: int, runs: int) -> int:
    """Threads one flow run gets: its share of the cores, at least one.

    >>> thread_budget(16, 1), thread_budget(16, 2), thread_budget(2, 2), thread_budget(2, 4)
    (16, 8, 1, 1)
    """
    return max(1, cores // max(1, runs))


def resolve_threads(configured: int | None, environ: dict[str, str] | None = None,
                    cores: int | None = None) -> int:
    """The thread count for this process: `threads:` from the config when set, else the worker's budget."""
    if configured:
        return configured
    return thread_budget(usable_cores() if cores is None else cores, runs_per_worker(environ))


def apply_threads(threads: int) -> None:
    """Use `threads` in torch here and in every process started from here (OpenMP, MKL, OpenBLAS read their
    variables at start-up)."""
    import torch

    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
