"""Per stage of one run: seconds, throughput, and memory - planned, peak, and what was left in use after it.

    python bench/gpu_smoke_report.py runs/gpu-smoke/<run_id>     # bench/gpu_smoke.sh prints this at its end

Throughput is the stage's own work over its wall time (model loads and server start-ups included): sft the
trained tokens per second of its epochs (metrics.jsonl), generate the new tokens of every answer file it wrote,
judge the judgments it made (judgments.cache.jsonl: pointwise, rubric, anchors, pairwise, noise, suite). Memory
comes from the manifest: on a GPU the device-wide peak beyond what was in use before the stage (a vLLM server in
its own process included) and what the stage had not handed back when it ended; on the CPU the peak resident memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sftjudge.run import files  # noqa: E402
from sftjudge.run.io import read_jsonl  # noqa: E402

GIB = 2**30
ANSWERS = (files.GENERATIONS, files.BASELINE_GENERATIONS, files.REGRESSION_GENERATIONS, files.REGRESSION_BASELINE)


def throughput(run: Path, stage: str, info: dict) -> str:
    seconds = info.get("seconds") or 0
    if stage == "sft" and (run / files.EPOCH_METRICS).is_file():
        epochs = read_jsonl(run / files.EPOCH_METRICS)
        rates = [e["tokens_per_second"] for e in epochs if e.get("tokens_per_second")]
        return f"{sum(rates) / len(rates):.0f} train tok/s" if rates else "-"
    if stage == "generate" and seconds:
        made = sum(r["completion_tokens"] for name in ANSWERS if (run / name).is_file()
                   for r in read_jsonl(run / name))
        return f"{made / seconds:.0f} new tok/s"
    if stage == "judge" and seconds and (run / files.JUDGMENT_CACHE).is_file():
        judged = len((run / files.JUDGMENT_CACHE).read_text().splitlines())
        return f"{judged / seconds:.1f} judgments/s"
    return "-"


def memory(info: dict) -> tuple[str, str, str]:
    """(planned, peak, left in use) in GiB."""
    record = info.get("memory") or {}

    def gib(value) -> str:
        return "-" if value is None else f"{value / GIB:.1f}"

    planned = gib(record.get("planned_bytes"))
    if not record:
        return "-", "-", "-"
    if "gpu_free_before" in record:
        left = record["gpu_free_before"] - record["gpu_free_after"]
        return planned, gib(record.get("gpu_peak_used")), gib(max(left, 0))
    return planned, gib(record.get("peak_rss_bytes")) + " (RSS)", "-"


def report(run: Path) -> str:
    manifest = json.loads((run / files.MANIFEST).read_text())
    lines = [f"{'stage':<9} {'status':<10} {'seconds':>8}  {'throughput':<20} {'planned GiB':>11} {'peak GiB':>12} "
             f"{'left in use GiB':>15}"]
    for stage, info in manifest["stages"].items():
        planned, peak, left = memory(info)
        lines.append(f"{stage:<9} {info.get('status', '-'):<10} {info.get('seconds', 0) or 0:>8.1f}  "
                     f"{throughput(run, stage, info):<20} {planned:>11} {peak:>12} {left:>15}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/gpu_smoke_report.py RUN_DIR")
    print(report(Path(sys.argv[1])))
