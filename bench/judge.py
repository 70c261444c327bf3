"""Judging throughput: logprob mode (one forward pass per item) vs text mode (generate JSON, parse, repair), and
the per-dimension rubric judge with and without reusing the shared prompt.

Same judge model, same items (the bundled calibration answers), same batch size, in one run. Also reports how
each mode agrees with the rubric labels, since a faster judge that is wrong is no bargain; and what the four
rubric dimensions cost next to one pointwise judgment (goal: at most 1.5x), with the largest difference between
the reused-prompt scores and the one-prompt-per-dimension scores (goal: within 1e-3 at fp32; bf16 rounds more).

    python bench/judge.py [--quick] [--items N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random judge: checks the plumbing in seconds")
    parser.add_argument("--items", type=int, default=16, help="labelled items judged by each mode (default 16)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        os.environ.setdefault("SFTJUDGE_HOME", tempfile.mkdtemp(prefix="sftjudge-bench-"))

    from sftjudge.config import JudgeConfig, RunConfig
    from sftjudge.judge.calibrate import load_labels, pointwise_agreement
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.models.embedded import sftjudge_home

    model = "tiny" if args.quick else "qwen2.5-coder-1.5b-instruct"
    _, items = load_labels(REPO / "data/sample/calibration.jsonl")
    items = items[:args.items]
    spec = load_judge(REPO / "judges", "reference-score")
    rows = []
    for mode in ("logprob", "text"):
        config = RunConfig(judge=JudgeConfig(model=model, mode=mode, batch_size=args.batch_size))
        loaded = LoadedJudge(config, sftjudge_home(config.home))
        scorer = loaded.scorer(spec)
        scorer.score(items[:1], batch_size=1)  # warm-up: first-call overheads are not throughput
        started = time.perf_counter()
        judged = scorer.score(items, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        agreement = pointwise_agreement([float(i["human_score"]) for i in items], [j.score for j in judged])
        rows.append((mode, len(items) / seconds, seconds, sum(j.unparseable is not None for j in judged),
                     agreement["spearman"]))
        loaded.close()
    print(f"judge model: {model}, {len(items)} items, batch {args.batch_size}")
    print(f"{'mode':10}{'items/s':>10}{'seconds':>10}{'unparseable':>13}{'spearman':>10}")
    for mode, rate, seconds, bad, rho in rows:
        print(f"{mode:10}{rate:>10.2f}{seconds:>10.1f}{bad:>13}{rho if rho is not None else '-':>10}")
    print(f"ratio (logprob/text items/s): {rows[0][1] / rows[1][1]:.2f}")
    rubric(model, items, args.batch_size)


def rubric(model: str, items: list[dict], batch_size: int) -> None:
    """Four dimensions from one shared prompt, against one pointwise judgment and four separate prompts."""
    from sftjudge.config import JudgeConfig, RunConfig
    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.rubric import RubricJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.models.embedded import sftjudge_home

    config = RunConfig(judge=JudgeConfig(model=model, batch_size=batch_size))
    loaded = LoadedJudge(config, sftjudge_home(config.home))
    pointwise = loaded.scorer(load_judge(REPO / "judges", "reference-score"))
    spec = load_judge(REPO / "judges", "rubric")
    shared = RubricJudge(loaded.model, loaded.tokenizer, spec)
    separate = {name: LogprobJudge(loaded.model, loaded.tokenizer,
                                   spec.model_copy(update={"kind": "score", "answer_prefix": f"{opening}: "}))
                for name, opening in spec.criteria.items()}
    pointwise.score(items[:1], batch_size=1)  # warm-up
    timed = {}
    for name, run in (("pointwise (1 score)", lambda: pointwise.score(items, batch_size=batch_size)),
                      ("rubric, shared prompt", lambda: shared.score(items, batch_size=batch_size)),
                      ("rubric, 4 prompts", lambda: {n: j.score(items, batch_size=batch_size)
                                                     for n, j in separate.items()})):
        started = time.perf_counter()
        timed[name] = (run(), time.perf_counter() - started)
    reused, _ = timed["rubric, shared prompt"]
    apart, _ = timed["rubric, 4 prompts"]
    gap = max(abs(r.dimensions[n] - apart[n][i].score) for i, r in enumerate(reused) for n in separate)
    base = timed["pointwise (1 score)"][1]
    print(f"\nrubric ({', '.join(spec.criteria)}), {len(items)} items, batch {batch_size}")
    for name, (_, seconds) in timed.items():
        print(f"{name:24}{seconds:>9.1f} s{seconds / base:>8.2f}x one pointwise judgment")
    print(f"largest |shared - separate| dimension score: {gap:.2e}")


if __name__ == "__main__":
    main()
