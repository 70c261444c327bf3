"""Does the verdict get an unambiguous case right, and does it say so? A self-written check.

`bench/data/verdict_check.jsonl` holds 30 short factual questions (written for sftjudge), each with a reference
answer, a correct one-line answer worded differently (`good`), and a long off-task continuation that never
answers (`off_task`, 800-1,300 tokens of chatty rambling, like a base model continuing the prompt). Any person
prefers the one-liners. This script judges both sets with the configured judge in one run and prints, side by
side:

- the judge's mean score of each set, with the paired difference and its interval;
- the same off-task answers judged with the old left cut of over-long prompts (system text, question and
  reference dropped first) and with the new middle cut of the answer;
- ROUGE-L, token F1 and semantic similarity of each set, and whether the cross-check calls the judge contested;
- both sets on the reference-anchored scale (empty answer = 0%, reference = 100%).

    python bench/verdict_check.py [--quick] [--items N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "bench" / "data" / "verdict_check.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random judge and encoder: plumbing only")
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        os.environ.setdefault("SFTJUDGE_HOME", tempfile.mkdtemp(prefix="sftjudge-bench-"))

    from sftjudge.config import JudgeConfig, RunConfig
    from sftjudge.decide.consistency import contested, readings
    from sftjudge.judge.anchors import anchor_scores, normalised
    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.metrics import FormatRule
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import judge_item, load_judge
    from sftjudge.judge.stage import cheap_metrics
    from sftjudge.models.embedded import sftjudge_home
    from sftjudge.models.encoder import SentenceEncoder, resolve_encoder

    rows = [json.loads(line) for line in DATA.read_text().splitlines()][:args.items]
    judge = JudgeConfig(model="tiny" if args.quick else "qwen2.5-coder-1.5b-instruct", batch_size=args.batch_size,
                        similarity_encoder="tiny" if args.quick else "all-minilm-l6-v2")
    config = RunConfig(judge=judge)
    home = sftjudge_home(config.home)
    loaded = LoadedJudge(config, home)
    spec = load_judge(REPO / "judges", judge.judge)
    sets = {name: [{"id": r["id"], "instruction": r["instruction"], "reference": r["reference"], "text": r[name]}
                   for r in rows] for name in ("good", "off_task")}

    class LeftCut(LogprobJudge):
        """The judge stage's truncation before this change: keep the last max_prompt_tokens tokens."""

        def encode(self, item):
            ids = self.prompt_ids(item)
            return ids[-self.max_prompt_tokens:], len(ids) > self.max_prompt_tokens

    scorer = loaded.scorer(spec)
    scored, seconds = {}, {}
    for name, scoring in (("good", scorer), ("off_task", scorer),
                          ("off_task, old left cut", LeftCut(loaded.model, loaded.tokenizer, spec,
                                                             max_prompt_tokens=loaded.prompt_budget(spec)))):
        generations = sets[name.split(",")[0]]
        started = time.perf_counter()
        judged = scoring.score([judge_item(g) for g in generations], batch_size=args.batch_size)
        seconds[name] = time.perf_counter() - started
        scored[name] = {g["id"]: {"score": j.score, "truncated": j.truncated} for g, j in zip(generations, judged)}
    encoder = SentenceEncoder(resolve_encoder(judge.similarity_encoder, home))
    metrics = {name: cheap_metrics(gens, FormatRule("none"), encoder) for name, gens in sets.items()}
    anchors = anchor_scores(loaded, spec, sets["good"], home, args.batch_size)

    def items(name: str) -> dict:
        base = name.split(",")[0]
        return {g["id"]: {"score": scored[name][g["id"]]["score"], "metrics": m}
                for g, m in zip(sets[base], metrics[base])}

    print(f"judge {loaded.identity(spec)}, {len(rows)} items, prompt budget {loaded.prompt_budget(spec)} tokens "
          f"(judge.max_prompt_tokens {judge.max_prompt_tokens})\n")
    print(f"{'answer set':26} {'judge mean':>10} {'cut':>5} {'% of ref':>9} {'ROUGE-L':>8} {'token F1':>9} "
          f"{'similarity':>10} {'seconds':>8}")
    for name in scored:
        base = name.split(",")[0]
        values = [v["score"] for v in scored[name].values() if v["score"] is not None]
        cut = sum(v["truncated"] for v in scored[name].values())
        scale = normalised({i: v["score"] for i, v in scored[name].items()}, anchors)
        mean = {k: statistics.fmean(m[k] for m in metrics[base]) for k in ("rouge_l", "token_f1", "similarity")}
        print(f"{name:26} {statistics.fmean(values):10.2f} {cut:5d} {'-' if scale is None else f'{scale:.0%}':>9} "
              f"{mean['rouge_l']:8.3f} {mean['token_f1']:9.3f} {mean['similarity']:10.3f} {seconds[name]:8.1f}")
    for against in ("off_task", "off_task, old left cut"):
        found = readings(items("good"), items(against), config.decide.ci_level)
        signs = {1: "+", -1: "-", 0: "0"}
        print(f"\ngood vs {against}: " + "; ".join(f"{r.describe()} [{signs[r.direction]}]" for r in found))
        print("  cross-check: " + (contested(found, against) or "not contested: every signal that is sure points the "
                                   "same way"))
    right = statistics.fmean(v["score"] for v in scored["good"].values()) > statistics.fmean(
        v["score"] for v in scored["off_task"].values())
    print(f"\nverdict: the judge prefers the correct one-liners: {'YES' if right else 'NO'}")


if __name__ == "__main__":
    main()
