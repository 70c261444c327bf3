"""Length-controlled comparisons: how much of a judge-score difference comes with answer length alone.

LLM judges favour longer answers, and a small local judge more than most. AlpacaEval 2's remedy (a length-controlled
win rate, which raised its Spearman correlation with human rankings from 0.94 to 0.98) is to model the judge's
preference with a length term and read the preference at equal length. Here, for the paired items of two answer
sets (this run against the champion, or against the base model):

    d_i = delta + b1 * (r_run - r_other) + b2 * (r_run^2 - r_other^2),    r = log((1 + chars) / (1 + reference chars))

`r` is an answer's length relative to its reference (0: as long as the reference), so the squared term lets the fit
see both sides - an answer much shorter than the reference and one much longer can both cost - instead of one
straight line in length. `delta`, the difference when both answers are equally long, is the length-controlled
difference; `raw - delta` is the part that came with length. Pairwise outcomes (win 1, tie 0.5, loss 0) get the
same terms in a logistic model; the controlled win rate is the fitted rate at equal length. Intervals are
percentile bootstraps over items, seeded. The length effect counts as "beyond noise" when the interval of the part
that came with length excludes zero: then a decision is made on the controlled figure, and says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_ITEMS = 8  # fewer paired items cannot separate a length effect from the difference itself
RESAMPLES = 1000
RIDGE = 1e-3  # keeps a fit whose answers barely differ in length from exploding; the intercept is not penalised


def relative_length(answer: str, reference: str) -> float:
    """log of an answer's length over its reference's (characters).

    >>> relative_length("abc", "abc"), round(relative_length("a" * 99, "a" * 9), 3)
    (0.0, 2.303)
    """
    return math.log((1 + len(answer)) / (1 + len(reference)))


def _design(run_r: np.ndarray, other_r: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(run_r), run_r - other_r, run_r ** 2 - other_r ** 2])


def _ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    penalty = RIDGE * np.diag([0.0, 1.0, 1.0]) * len(y)
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def _logistic(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Logistic regression on outcomes in [0, 1] (ties as 0.5) by Newton's method, ridge on the length terms."""
    beta = np.zeros(x.shape[1])
    penalty = RIDGE * np.diag([0.0, 1.0, 1.0]) * len(y) + 1e-9 * np.eye(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        gradient = x.T @ (y - p) - penalty @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2
    return [round(float(np.quantile(values, tail)), 4), round(float(np.quantile(values, 1 - tail)), 4)]


def length_controlled(run: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], *, outcome: str = "score",
                      level: float = 0.95, seed: int = 0) -> dict[str, Any] | None:
    """The raw and the length-controlled difference of `run` over `other` on their shared items, or None with too
    few. Each item: {"score": float, "answer": str, "reference": str}; with outcome="pairwise", `run` items hold
    "outcome" (win / tie / loss against `other`) and the figures are win rates.
    """
    pairwise = outcome == "pairwise"
    points = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    shared = sorted(i for i in set(run) & set(other) if _usable(run[i], other[i], pairwise))
    if len(shared) < MIN_ITEMS:
        return None
    run_r = np.array([relative_length(run[i]["answer"], run[i]["reference"]) for i in shared])
    other_r = np.array([relative_length(other[i]["answer"], other[i]["reference"]) for i in shared])
    y = np.array([points[run[i]["outcome"]] if pairwise else run[i]["score"] - other[i]["score"] for i in shared])
    x = _design(run_r, other_r)

    def controlled(rows: np.ndarray) -> float:
        if pairwise:
            return float(1.0 / (1.0 + math.exp(-_logistic(x[rows], y[rows])[0])))
        return float(_ols(x[rows], y[rows])[0])

    everything = np.arange(len(shared))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(shared), len(shared)) for _ in range(RESAMPLES)]
    at_equal = np.array([controlled(rows) for rows in draws])
    raw_draws = np.array([y[rows].mean() for rows in draws])
    with_length = raw_draws - at_equal
    low, high = _interval(with_length, level)
    fit = _logistic(x, y) if pairwise else _ols(x, y)
    return {
        "items": len(shared), "measure": "win rate" if pairwise else "judge score difference",
        "raw": round(float(y.mean()), 4), "raw_ci": _interval(raw_draws, level),
        "controlled": round(controlled(everything), 4), "controlled_ci": _interval(at_equal, level),
        "with_length": round(float(y.mean()) - controlled(everything), 4), "with_length_ci": [low, high],
        "length_terms": [round(float(b), 4) for b in fit[1:]],
        "mean_relative_length": {"run": round(float(run_r.mean()), 4), "other": round(float(other_r.mean()), 4)},
        "beyond_noise": bool(low > 0 or high < 0), "level": level,
    }


def _usable(mine: dict[str, Any], theirs: dict[str, Any], pairwise: bool) -> bool:
    texts = all(isinstance(side.get(k), str) for side in (mine, theirs) for k in ("answer", "reference"))
    if pairwise:
        return texts and mine.get("outcome") in ("win", "tie", "loss")
    return texts and mine.get("score") is not None and theirs.get("score") is not None


def length_note(control: dict[str, Any], against: str) -> str:
    """One reason line: the raw and the controlled figure, and how much came with length.

    >>> length_note({"items": 40, "measure": "judge score difference", "raw": 0.62, "raw_ci": [0.4, 0.8],
    ...              "controlled": 0.03, "controlled_ci": [-0.2, 0.25], "with_length": 0.59,
    ...              "with_length_ci": [0.35, 0.8], "beyond_noise": True, "level": 0.95}, "champion a")[:74]
    'length: against champion a the judge score difference is +0.62 raw (95% CI'
    """
    sign = "+" if control["measure"] != "win rate" else ""
    fmt = (lambda v: f"{v:+.2f}") if sign else (lambda v: f"{v:.0%}")
    ci = control["controlled_ci"]
    verdict = ("the judge's preference for length is beyond noise here, so the decision reads the controlled figure"
               if control["beyond_noise"] else "length explains no more than noise here")
    return (f"length: against {against} the {control['measure']} is {fmt(control['raw'])} raw "
            f"({control['level']:.0%} CI "
            f"{fmt(control['raw_ci'][0])} to {fmt(control['raw_ci'][1])}) and {fmt(control['controlled'])} at equal "
            f"answer length ({fmt(ci[0])} to {fmt(ci[1])}; {control['with_length']:+.2f} came with length, over "
            f"{control['items']} items): {verdict}")
