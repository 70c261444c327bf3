"""Does the product's judge order models the way an independent ranking does? Agreement on public data.

Data: the tatsu-lab/alpaca_eval repository (Apache-2.0), read from a local clone or mirror, never copied here:
- `results/<model>/model_outputs.json` - each model's answers to the same 805 AlpacaEval instructions;
- `results/gpt4_1106_preview/model_outputs.json` - the answers used as references (AlpacaEval 2's baseline);
- `src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv` - the known
  order: each model's length-controlled win rate against that baseline, judged by GPT-4 Turbo on all 805 items
  (made independently of this judge).
`gpt4_1106_preview_concise` and `_verbose` answer the same instructions as the baseline, told to be brief or
thorough: a direct test of length bias.

N models x M items (a seeded sample) go through the product's judge code (LoadedJudge, the configured definition,
anchors) once per prompt budget given, and it prints, per budget:
- each model's mean judge score, % of the way from an empty answer to the reference, answers cut, mean length;
- Spearman of the model means against the leaderboard's length-controlled and raw win rates;
- the best-minus-worst paired difference (by the leaderboard) with its bootstrap interval;
- concise minus verbose: raw and length-controlled (decide/length.py), the anchors' spread, and seconds;
- with --pairwise: the pairwise judge on best vs worst in both orders - swap consistency, how often it picks the
  first answer, how often the both-orders verdict picks the better model, and how often averaging each label's
  probability over the two orders does (the position-debiased reading).

    python bench/agreement.py --alpaca-eval /path/to/alpaca_eval [--items 16] [--budgets 1024,auto]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BASELINE = "gpt4_1106_preview"
LEADERBOARD = "src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
MODELS = ("gpt4", "Mixtral-8x7B-Instruct-v0.1", "gpt-3.5-turbo-0613", "llama-2-7b-chat-hf", "oasst-sft-pythia-12b")
LENGTH_PAIR = ("gpt4_1106_preview_concise", "gpt4_1106_preview_verbose")


def read(source: Path, path: str) -> str:
    """A file of the alpaca_eval repository: from a checkout, or from a bare mirror by `git show`."""
    if (source / path).is_file():
        return (source / path).read_text(encoding="utf-8")
    return subprocess.run(["git", "--git-dir", str(source), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def outputs(source: Path, model: str) -> dict[str, str]:
    rows = json.loads(read(source, f"results/{model}/model_outputs.json"))
    return {row["instruction"]: row["output"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpaca-eval", type=Path, required=True,
                        help="a clone of tatsu-lab/alpaca_eval, or its bare mirror (git dir)")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-reference-chars", type=int, default=1200,
                        help="sample only instructions whose reference answer is at most this long: a 1.5B judge on "
                             "2 CPU cores takes seconds per 100 prompt tokens")
    parser.add_argument("--budgets", default="1024,auto", help="judge.max_prompt_tokens values, compared in one run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--judge", default="reference-score")
    parser.add_argument("--quick", action="store_true", help="the tiny random judge: plumbing only")
    parser.add_argument("--pairwise", action="store_true", help="also the pairwise judge, best vs worst model")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sftjudge.config import RunConfig
    from sftjudge.decide.length import length_controlled
    from sftjudge.decide.rules import detectable_difference
    from sftjudge.judge.anchors import anchor_scores, anchor_summary, normalised
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.pairwise import bootstrap_ci
    from sftjudge.judge.spec import judge_item, load_judge
    from sftjudge.models.embedded import sftjudge_home
    from sftjudge.review.agreement import _spearman

    board = {row[""]: row for row in csv.DictReader(io.StringIO(read(args.alpaca_eval, LEADERBOARD)))}
    answers = {m: outputs(args.alpaca_eval, m) for m in (BASELINE, *MODELS, *LENGTH_PAIR)}
    shared = sorted(set.intersection(*(set(a) for a in answers.values())))
    short = [q for q in shared if len(answers[BASELINE][q]) <= args.max_reference_chars]
    items = random.Random(args.seed).sample(short, args.items)
    print(f"alpaca_eval {args.alpaca_eval}: {len(shared)} instructions answered by all {len(answers)} models, "
          f"{len(short)} with a reference of at most {args.max_reference_chars} characters; {len(items)} sampled "
          f"(seed {args.seed}); references: results/{BASELINE}/model_outputs.json; order: {LEADERBOARD}\n")

    def generations(model: str) -> list[dict]:
        return [{"id": f"i{n:03d}", "instruction": q, "reference": answers[BASELINE][q], "text": answers[model][q]}
                for n, q in enumerate(items)]

    sets = {m: generations(m) for m in (*MODELS, *LENGTH_PAIR)}
    for budget in args.budgets.split(","):
        # Room for these long answers: auto is sized from sft.max_seq_len and generate.max_new_tokens.
        config = RunConfig(judge={"model": "tiny" if args.quick else "qwen2.5-coder-1.5b-instruct",
                                  "judge": args.judge, "batch_size": args.batch_size,
                                  "max_prompt_tokens": budget if budget == "auto" else int(budget)},
                           sft={"max_seq_len": 1024}, generate={"max_new_tokens": 2048},
                           regression={"enabled": False})
        home = sftjudge_home(config.home)
        loaded = LoadedJudge(config, home)
        spec = load_judge(REPO / "judges", args.judge)
        started = time.perf_counter()
        scored = {}
        for name, gens in sets.items():
            judged = loaded.scorer(spec).score([judge_item(g) for g in gens], batch_size=args.batch_size)
            scored[name] = {g["id"]: {"score": j.score, "cut": j.truncated, "answer": g["text"],
                                      "reference": g["reference"]} for g, j in zip(gens, judged)}
        # Anchors kept apart per budget: their cache is per judge identity, which a budget does not change.
        anchors = anchor_scores(loaded, spec, sets[MODELS[0]], Path(tempfile.mkdtemp(prefix="anchors-")),
                                args.batch_size)
        seconds = time.perf_counter() - started
        scale = anchor_summary(anchors)
        print(f"judge.max_prompt_tokens={budget}: prompt budget {loaded.prompt_budget(spec)} tokens, "
              f"{seconds:.0f} s for {sum(len(g) for g in sets.values()) + 2 * len(items)} judgments; anchors: "
              f"empty {scale['empty_mean']}, reference {scale['reference_mean']} "
              f"(spread {scale['reference_mean'] - scale['empty_mean']:.2f})")
        print(f"  {'model':30} {'LC win %':>8} {'win %':>6} {'judge':>6} {'% ref':>6} {'cut':>4} {'chars':>6}")
        means = {}
        for name in (*MODELS, *LENGTH_PAIR):
            got = {i: s["score"] for i, s in scored[name].items() if s["score"] is not None}
            means[name] = statistics.fmean(got.values())
            share = normalised(got, anchors)
            print(f"  {name:30} {float(board[name]['length_controlled_winrate']):8.1f} "
                  f"{float(board[name]['win_rate']):6.1f} {means[name]:6.2f} "
                  f"{'-' if share is None else f'{share:.0%}':>6} "
                  f"{sum(s['cut'] for s in scored[name].values()):4d} "
                  f"{statistics.fmean(len(s['answer']) for s in scored[name].values()):6.0f}")
        ours = [means[m] for m in MODELS]
        for column, label in (("length_controlled_winrate", "length-controlled"), ("win_rate", "raw")):
            rho = _spearman(ours, [float(board[m][column]) for m in MODELS])
            print(f"  Spearman of the {len(MODELS)} model means against the leaderboard's {label} win rate: "
                  f"{'-' if rho is None else f'{rho:.2f}'}")
        best, worst = MODELS[0], MODELS[-1]
        diffs = [scored[best][i]["score"] - scored[worst][i]["score"] for i in scored[best]
                 if scored[best][i]["score"] is not None and scored[worst][i]["score"] is not None]
        low, high = bootstrap_ci(diffs)
        detectable = detectable_difference(diffs)
        print(f"  {best} minus {worst}: {statistics.fmean(diffs):+.2f} (95% CI {low:+.2f} to {high:+.2f}, "
              f"{len(diffs)} items; detectable {detectable:.2f})")
        concise, verbose = LENGTH_PAIR
        control = length_controlled(scored[concise], scored[verbose])
        if control:
            print(f"  {concise} minus {verbose}: raw {control['raw']:+.2f} ({control['raw_ci'][0]:+.2f} to "
                  f"{control['raw_ci'][1]:+.2f}), at equal length {control['controlled']:+.2f} "
                  f"({control['controlled_ci'][0]:+.2f} to {control['controlled_ci'][1]:+.2f}); came with length "
                  f"{control['with_length']:+.2f}, beyond noise: {control['beyond_noise']}")
        if args.pairwise:
            pairwise_agreement(loaded, sets[best], sets[worst], args.batch_size)
        print()
        loaded.close()


def pairwise_agreement(loaded, better: list[dict], worse: list[dict], batch_size: int) -> None:
    """Best vs worst through the pairwise judge in both orders: position bias, and two ways to read a verdict."""
    from sftjudge.judge.pairwise import combine_orders, summarise
    from sftjudge.judge.spec import load_judge

    spec = load_judge(REPO / "judges", loaded.config.pairwise_judge)
    base = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"]} for g in better]
    scorer = loaded.scorer(spec)
    started = time.perf_counter()
    first = scorer.score([b | {"answer_a": g["text"], "answer_b": w["text"]} for b, g, w in zip(base, better, worse)],
                         batch_size=batch_size)
    second = scorer.score([b | {"answer_a": w["text"], "answer_b": g["text"]} for b, g, w in zip(base, better, worse)],
                          batch_size=batch_size)
    # labels only: a win needs both orders to agree
    outcomes = [combine_orders(b["id"], a.choice, c.choice) for b, a, c in zip(base, first, second)]
    summary = summarise(outcomes)
    averaged = [combine_orders(b["id"], a.choice, c.choice, a.distribution, c.distribution)
                for b, a, c in zip(base, first, second)]
    print(f"  pairwise ({spec.name}), better first and second, {len(outcomes)} items, "
          f"{time.perf_counter() - started:.0f} s: swap consistency {summary['swap_consistency']}, first answer "
          f"picked {summary['first_position_rate']}, both-orders verdict picks the better model in "
          f"{sum(o.outcome == 'win' for o in outcomes)} of {len(outcomes)}; order-averaged probabilities (the "
          f"product's verdict) pick it in {sum(o.outcome == 'win' for o in averaged)} of {len(averaged)}")


if __name__ == "__main__":
    main()
