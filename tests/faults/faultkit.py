"""Helpers for the fault suite: tiny data, configs, cloning a run directory, running a child that SIGKILLs itself."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

WORDS = ("router modem invoice refund parcel laptop screen battery charger account password login email "
         "delivery courier warranty speaker headset camera printer cable adapter firmware update billing "
         "subscription coupon discount order return exchange address phone tablet keyboard mouse monitor "
         "desk chair lamp kettle blender toaster oven fridge freezer washer dryer vacuum drone watch ring").split()
INTENTS = ("refund", "bug_report", "delivery", "account", "billing")


def tiny_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """Distinct support messages (random words, so no near-duplicates) with a short JSON answer each."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.sample(WORDS, 8))
        rows.append({"id": f"t{i:03d}", "prompt": f"Ticket {i}: {words}",
                     "completion": json.dumps({"intent": INTENTS[i % len(INTENTS)], "n": i})})
    return rows


def fault_config(runs_dir: Path, data: Path, *extra: str):
    from sftjudge.config_yaml import load_config

    return load_config(REPO / "configs/tiny.yaml", [
        f"runs_dir={runs_dir}", f"data.path={data}", f"judge.judges_dir={REPO / 'judges'}", "data.cache=false",
        "judge.noise_items=0", "sft.epochs=2", "threads=1",
        "generate.baseline=false", "regression.enabled=false",
        "decide.min_paired_items=3",  # 6 test items: these tests check what survives faults, not statistics
        *extra])


def clone_run(src: Path, runs_dir: Path, run_id: str, *, reset: tuple[str, ...] = ()) -> Path:
    """Copy a run directory under `runs_dir/run_id`, rewrite the paths recorded inside it, and reset stages."""
    from sftjudge.run import files
    from sftjudge.run.directory import RunDir

    dst = Path(runs_dir) / run_id
    shutil.copytree(src, dst)
    for path in list(dst.rglob("*.json")) + list(dst.rglob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        if str(src) in text:
            path.write_text(text.replace(str(src), str(dst)), encoding="utf-8")
    run = RunDir(dst)
    manifest = run.manifest()
    manifest["run_id"] = run_id
    for stage in reset:
        manifest["stages"][stage] = {"status": "pending"}
        for name in files.STAGE_OUTPUTS[stage]:
            target = dst / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    manifest["status"] = "running"
    (dst / files.MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dst


def run_killed(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a Python script that is expected to SIGKILL itself; fail the test if it did not die that way."""
    prelude = (f"import sys\nsys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]\n"
               f"import torch\ntorch.set_num_threads(1)\n")
    proc = subprocess.run([sys.executable, "-c", prelude + script], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == -9, f"expected death by SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def set_scores(run_path: Path, scores: list[float]) -> None:
    """Give a finished run's judgments these per-item scores (in test-split order) and the matching mean."""
    from sftjudge.run import files
    from sftjudge.run.io import read_jsonl, write_jsonl

    judgments = read_jsonl(run_path / files.JUDGMENTS)
    assert len(judgments) == len(scores)
    write_jsonl(run_path / files.JUDGMENTS, [j | {"score": s} for j, s in zip(judgments, scores)])
    metrics = json.loads((run_path / files.METRICS).read_text())
    metrics["judge_score_mean"] = round(sum(scores) / len(scores), 4)
    (run_path / files.METRICS).write_text(json.dumps(metrics), encoding="utf-8")


class AtPointerWrite:
    """Wraps a registry sqlite3 connection; calls `action()` just before the champion pointer is written.

    Used to crash (SIGKILL) or fill the disk at the worst moment: inside the transaction, after the run's row.
    """

    def __init__(self, db, action):
        self.db, self.action = db, action

    def execute(self, sql, *args):
        if sql.lstrip().startswith("INSERT INTO champion_history"):
            self.action()
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)
