"""Judge calibration: how well does the configured judge agree with human labels?

Input: JSONL of human-labelled items, either pointwise (`instruction`, `reference`, `answer`, `human_score`) or
pairwise (`instruction`, `reference`, `answer_a`, `answer_b`, `human_winner` in A/B/C). The result (rank
correlations, agreement, swap consistency) is stored per judge under $SFTJUDGE_HOME/calibration/ and shown in
every report that uses that judge.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftjudge.errors import CalibrationError
from sftjudge.judge.pairwise import combine_orders
from sftjudge.run.io import atomic_write_json, numbered_json_lines, read_json_if_present


def load_labels(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Read the labelled items; returns ("pointwise" | "pairwise", items). All rows must be of one kind."""
    items, kinds = [], set()
    for line_no, row in numbered_json_lines(path, CalibrationError):
        kind = "pairwise" if "human_winner" in row else "pointwise" if "human_score" in row else None
        needed = {"pointwise": ("instruction", "reference", "answer", "human_score"),
                  "pairwise": ("instruction", "reference", "answer_a", "answer_b", "human_winner")}.get(kind)
        if needed is None:
            raise CalibrationError(f"{path}:{line_no}: needs a human_score (pointwise) or human_winner (pairwise)")
        missing = [f for f in needed if f not in row]
        if missing:
            raise CalibrationError(f"{path}:{line_no}: field {missing[0]!r} missing")
        kinds.add(kind)
        items.append(row | {"id": str(row.get("id", f"line{line_no}"))})
    if len(kinds) != 1:
        raise CalibrationError(f"{path}: {'no labelled rows' if not kinds else 'mixes pointwise and pairwise rows'}")
    return kinds.pop(), items


def pointwise_agreement(human: list[float], judge: list[float | None]) -> dict[str, Any]:
    """Spearman and Kendall rank correlation, mean absolute error and within-1-point agreement.

    >>> r = pointwise_agreement([1, 5, 10, 7], [2.0, 4.5, 9.0, 8.0])
    >>> r["spearman"], r["within_1"]
    (1.0, 1.0)
    """
    from scipy.stats import kendalltau, spearmanr

    pairs = [(h, j) for h, j in zip(human, judge) if j is not None]
    if len(pairs) < 3:
        return {"items": len(pairs), "spearman": None, "kendall": None, "mae": None, "within_1": None}
    h, j = zip(*pairs)
    return {"items": len(pairs), "unscored": len(human) - len(pairs),
            "spearman": round(float(spearmanr(h, j).statistic), 4),
            "kendall": round(float(kendalltau(h, j).statistic), 4),
            "mae": round(statistics.fmean(abs(a - b) for a, b in pairs), 4),
            "within_1": round(sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs), 4)}


def calibrate(path: Path, loaded_judge, pointwise_spec, pairwise_spec, batch_size: int = 4) -> dict[str, Any]:
    """Judge every labelled item with the loaded judge model and compare with the human labels."""
    kind, items = load_labels(path)
    if kind == "pointwise":
        judged = loaded_judge.scorer(pointwise_spec).score(items, batch_size=batch_size)
        result = pointwise_agreement([float(i["human_score"]) for i in items], [j.score for j in judged])
    else:
        scorer = loaded_judge.scorer(pairwise_spec)
        first = scorer.score(items, batch_size=batch_size)
        swapped = scorer.score([i | {"answer_a": i["answer_b"], "answer_b": i["answer_a"]} for i in items],
                               batch_size=batch_size)
        # Read "challenger" as answer A: outcome win = A better, loss = B better.
        outcomes = [combine_orders(i["id"], a.choice, b.choice, a.distribution, b.distribution)
                    for i, a, b in zip(items, first, swapped)]
        verdict = {"win": "A", "loss": "B", "tie": "C"}
        agree = [verdict.get(o.outcome) == i["human_winner"].strip().upper() for o, i in zip(outcomes, items)]
        result = {"items": len(items), "agreement": round(sum(agree) / len(items), 4),
                  "swap_consistency": round(sum(o.consistent for o in outcomes) / len(items), 4),
                  "unparseable": sum(o.outcome == "unparseable" for o in outcomes)}
    return {"kind": kind, "file": str(path), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")} | result


def calibration_path(home: Path, judge_key: str) -> Path:
    return home / "calibration" / (judge_key.replace("/", "_").replace("@", "__") + ".json")


def save_calibration(home: Path, judge_key: str, result: dict[str, Any]) -> Path:
    """Keep the latest result per kind (pointwise / pairwise) for this judge."""
    path = calibration_path(home, judge_key)
    stored = read_json_if_present(path) or {}
    stored[result["kind"]] = result
    atomic_write_json(path, stored)
    return path


def load_calibration(home: Path, judge_key: str) -> dict[str, Any]:
    path = calibration_path(home, judge_key)
    return read_json_if_present(path) or {}
