"""Write data/sample/calibration.jsonl: support-ticket answers labelled by a fixed rubric, for `judge calibrate`.

Each labelled answer is a reference from the sample data, either kept or damaged in a known way; the rubric
gives the score a careful human grader gives it: exact 10, one field wrong 6, two fields wrong 3, not the JSON
shape at all 1. Pairwise rows pit two of those answers against each other; the better-scored one wins, equal
scores tie (C). Seeded: the same file every time.

    python scripts/make_calibration_data.py [--out PATH] [--items N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"intent": ["refund", "bug_report", "account_access", "shipping", "billing", "feature_request"],
          "product": ["mobile app", "web dashboard", "smart speaker", "fitness band", "router"],
          "priority": ["low", "medium", "high"]}
RUBRIC = {"exact": 10, "one_wrong": 6, "two_wrong": 3, "not_json": 1}


def clean_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            json.loads(row["completion"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        rows.append(row)
    return rows


def damage(reference: str, how: str, rng: random.Random) -> str:
    obj = json.loads(reference)
    if how == "not_json":
        return rng.choice(["I'm sorry, I can't help with that.", f"The customer wants a {obj['intent']}.", ""])
    for key in rng.sample(sorted(FIELDS), {"exact": 0, "one_wrong": 1, "two_wrong": 2}[how]):
        obj[key] = rng.choice([v for v in FIELDS[key] if v != obj[key]])
    return json.dumps(obj, separators=(", ", ": "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "data/sample/calibration.jsonl"))
    parser.add_argument("--pairwise-out", default=str(ROOT / "data/sample/calibration_pairwise.jsonl"))
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = rng.sample(clean_rows(ROOT / "data/sample/support_tickets.jsonl"), args.items)
    pointwise, pairwise = [], []
    for i, row in enumerate(rows):
        how = list(RUBRIC)[i % len(RUBRIC)]
        answer = damage(row["completion"], how, rng)
        pointwise.append({"id": f"c{i:03d}", "instruction": row["prompt"], "reference": row["completion"],
                          "answer": answer, "human_score": RUBRIC[how], "damage": how})
        other = list(RUBRIC)[(i + 1 + i // len(RUBRIC)) % len(RUBRIC)]
        answer_b = damage(row["completion"], other, rng)
        a, b = RUBRIC[how], RUBRIC[other]
        pairwise.append({"id": f"p{i:03d}", "instruction": row["prompt"], "reference": row["completion"],
                         "answer_a": answer, "answer_b": answer_b, "human_winner": "A" if a > b else "B" if b > a
                         else "C"})
    for path, items in ((args.out, pointwise), (args.pairwise_out, pairwise)):
        Path(path).write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
        print(f"wrote {len(items)} labelled items to {path}")


if __name__ == "__main__":
    main()
