"""The memory planner against measured peaks: each model stage (sft, generate, judge) of a finished run is run
again in a process of its own, its peak resident memory (VmHWM) read while it runs, and set beside the planner's
estimate for the same config on this machine (CPU: resident memory is what the plan estimates).

    python bench/plan.py runs/<demo run> [runs/<tiny run> ...] [--seconds 150]

A stage runs on a copy of the run directory with its outputs removed; it is stopped after --seconds (the peak of
the first batches is what sizes a stage; a stopped stage says so in the table). The planner's runtime footprint
(interpreter and libraries) is printed next to the measured baseline of a process that imported the stage code
and loaded nothing. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STAGES = ("sft", "generate", "judge")
CHILD = """
import sys
from sftjudge.config_yaml import load_config
from sftjudge.curate.stage import curate_stage
from sftjudge.train.stage import sft_stage
from sftjudge.generate.stage import generate_stage
from sftjudge.judge.stage import judge_stage
stage, run = sys.argv[1], sys.argv[2]
if stage == "baseline":
    import time; time.sleep(3)
else:
    config = load_config(run + "/config.yaml", ["memory_check=false"])
    {"sft": sft_stage, "generate": generate_stage, "judge": judge_stage}[stage](run, config)
"""


def peak_of(stage: str, run: Path, seconds: float) -> tuple[int, bool]:
    """(peak resident bytes of a process running `stage` on `run`, whether it was stopped before finishing)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, stage, str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    status = Path(f"/proc/{proc.pid}/status")
    peak, started, stopped = 0, time.time(), False
    while proc.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration):
            pass
        if time.time() - started > seconds:
            proc.kill()
            proc.wait()
            stopped = True
            break
        time.sleep(0.2)
    if proc.returncode not in (0, None) and not stopped:
        sys.exit(f"the {stage} stage failed on {run} (exit {proc.returncode}); run it by hand to see why")
    return peak, stopped


def reset_copy(run: Path, stage: str, where: Path) -> Path:
    """The run copied with `stage` and every later stage pending and their outputs gone."""
    from sftjudge.run import files
    from sftjudge.run.directory import STAGES as ORDER

    dst = where / f"{run.name}-{stage}"
    shutil.copytree(run, dst)
    later = ORDER[ORDER.index(stage):]
    for name in later:
        for out in files.STAGE_OUTPUTS.get(name, ()):
            target = dst / out
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    manifest = json.loads((dst / files.MANIFEST).read_text())
    for name in later:
        manifest["stages"][name] = {"status": "pending"}
    (dst / files.MANIFEST).write_text(json.dumps(manifest))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (demo, tiny)")
    parser.add_argument("--seconds", type=float, default=150, help="stop a stage after this long")
    args = parser.parse_args()

    from sftjudge.config_yaml import load_config
    from sftjudge.models.embedded import sftjudge_home
    from sftjudge.plan.check import Planner, Target
    from sftjudge.plan.estimate import CPU_RUNTIME, gib

    target = Target.here(cuda=False)
    where = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    baseline, _ = peak_of("baseline", args.runs[0], 60)
    print(f"runtime: planned {gib(CPU_RUNTIME)} GiB, measured {gib(baseline)} GiB (imports only)")
    rows = []
    for run in args.runs:
        config = load_config(str(run / "config.yaml"))
        planner = Planner(config, sftjudge_home(config.home), target)
        for stage in STAGES:
            estimate = planner.estimate(stage)
            measured, stopped = peak_of(stage, reset_copy(run, stage, where), args.seconds)
            error = (estimate.total - measured) / measured
            rows.append((run.name, config.sft.base_model if stage != "judge" else config.judge.model, stage,
                         estimate, measured, stopped, error))
            print(f"  {run.name} {stage}: planned {gib(estimate.total)} GiB, measured {gib(measured)} GiB"
                  f"{' (stopped)' if stopped else ''}", flush=True)
    shutil.rmtree(where, ignore_errors=True)
    print(f"\nplanned vs measured peak resident memory on {target.name} (error = planned / measured - 1):")
    print(f"  {'model':30s} {'stage':9s} {'planned GiB':>11s} {'measured':>9s} {'error':>7s}  planned parts")
    for _, model, stage, estimate, measured, stopped, error in rows:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in estimate.parts.items() if v >= 0.05 * 2**30)
        print(f"  {model[:30]:30s} {stage:9s} {gib(estimate.total):>11s} {gib(measured):>9s} {error:+7.0%}  "
              f"{parts}{'  (stopped early)' if stopped else ''}")


if __name__ == "__main__":
    main()
