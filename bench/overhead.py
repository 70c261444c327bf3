"""What Prefect costs: the tiny cycle through the flow vs the same library stage functions called directly.

Both sides run configs/tiny.yaml end to end in this one process, on fresh run directories, curation cache off
so each side does the same work. The Prefect side includes the ephemeral API server start-up, task state
tracking, result persistence and artifacts; the tiny model makes that overhead visible.

    python bench/overhead.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_config(runs_dir: Path):
    from sftjudge.config_yaml import load_config

    return load_config(REPO / "configs/tiny.yaml", [
        f"runs_dir={runs_dir}", f"data.path={REPO / 'data/sample/support_tickets.jsonl'}",
        f"judge.judges_dir={REPO / 'judges'}", "data.cache=false"])


def direct(config) -> float:
    """Every stage function in order, no Prefect."""
    from sftjudge.curate.stage import curate_stage
    from sftjudge.decide.stage import decide_stage
    from sftjudge.generate.stage import generate_stage
    from sftjudge.judge.stage import judge_stage
    from sftjudge.run.stage import start_run
    from sftjudge.train.stage import sft_stage

    started = time.perf_counter()
    run = start_run(config)
    for stage in (curate_stage, sft_stage, generate_stage, judge_stage, decide_stage):
        stage(run, config)
    return time.perf_counter() - started


def through_prefect(config) -> float:
    from sftjudge.flows.cycle import fine_tune_then_judge

    started = time.perf_counter()
    summary = fine_tune_then_judge(config)
    assert summary["status"] == "completed", summary
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (default 2; medians reported)")
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "TQDM_DISABLE": "1"}.items():
        os.environ.setdefault(key, value)
    work = Path(tempfile.mkdtemp(prefix="sftjudge-overhead-"))
    os.environ.setdefault("SFTJUDGE_HOME", str(work / "home"))
    direct(tiny_config(work / "warmup"))  # builds the tiny model and warms imports for both sides
    plain, prefect = [], []
    for i in range(args.repeats):
        plain.append(direct(tiny_config(work / f"direct-{i}")))
        prefect.append(through_prefect(tiny_config(work / f"prefect-{i}")))
    a, b = statistics.median(plain), statistics.median(prefect)
    print(f"{'':24}{'median s':>10}  runs")
    print(f"{'library, direct':24}{a:>10.2f}  {', '.join(f'{x:.2f}' for x in plain)}")
    print(f"{'through Prefect flow':24}{b:>10.2f}  {', '.join(f'{x:.2f}' for x in prefect)}")
    print(f"overhead: {b - a:.2f} s per cycle")
    print(f"ratio (prefect/direct): {b / a:.2f}")


if __name__ == "__main__":
    main()
