"""bench/gpu_check.py, the script a GPU machine runs once, on a tiny shape on the CPU: every section runs through
the project's code and writes its numbers (a section that breaks would record an error instead)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.model
def test_gpu_check_runs_every_section_on_a_tiny_shape(tmp_path, stand_in):
    import os

    out = tmp_path / "check.json"
    # the vLLM section's server: the stand-in for vLLM's OpenAI server (tests/vllm_stand_in.py)
    env = os.environ | {"SFTJUDGE_VLLM_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--shapes", "tiny", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["matmul"]["tflops"] > 0
    tiny = report["shapes"]["tiny"]
    errors = {name: s["error"] for name, s in tiny.items() if "error" in s}
    assert not errors, errors
    for name in ("lora", "full"):
        assert tiny[name]["tokens_per_s"] > 0 and 0 < tiny[name]["mfu"] < 1
        assert tiny[name]["planned_bytes"] > 0 and tiny[name]["final_loss"] > 0
    # the stage's own trainer (SFTTrainer) on bf16 base weights, with its per-epoch losses
    assert tiny["stage"]["tokens_per_s"] > 0 and tiny["stage"]["precision"] == "bf16"
    assert tiny["stage"]["train_loss"] > 0 and tiny["stage"]["val_loss"] > 0
    assert tiny["qlora"]["skipped"]  # CUDA only
    assert tiny["generate"]["new_tokens"] == 8 * 8  # every answer ran its full length
    assert tiny["judge"]["scored"] == tiny["judge"]["items"] == 4
    # one server, the adapter and the base model each answered every prompt through the generate stage's client
    assert tiny["vllm"]["startup_s"] > 0
    assert tiny["vllm"]["student"]["prompts"] == tiny["vllm"]["base"]["prompts"] == 8
    assert tiny["vllm"]["student"]["new_tokens"] > 0 and tiny["vllm"]["base"]["new_tokens_per_s"] > 0
    started = [line for line in stand_in.read_text().splitlines() if '"argv"' in line]
    assert len(started) == 1 and "--lora-modules" in started[0]
