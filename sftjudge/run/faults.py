"""Deliberate, opt-in fault injection, so the retry paths can be tested end to end through a real deployment.

Off unless SFTJUDGE_INJECT_FAULT names stages (comma-separated), e.g. SFTJUDGE_INJECT_FAULT=generate: that
stage then fails once per run (a marker file in the run directory remembers it), and the retry succeeds.
Read at call time, never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised once per run and stage when fault injection is switched on for that stage."""


def maybe_fail(stage: str, run_dir: Path) -> None:
    stages = {s.strip() for s in os.environ.get("SFTJUDGE_INJECT_FAULT", "").split(",") if s.strip()}
    if stage not in stages:
        return
    marker = Path(run_dir) / f".fault-injected-{stage}"
    if not marker.exists():
        marker.touch()
        raise InjectedFault(f"injected fault in stage {stage} (SFTJUDGE_INJECT_FAULT); the retry will succeed")
