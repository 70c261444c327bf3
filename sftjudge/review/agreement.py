"""How well the judge agrees with the person who reviewed the sample, each measure with a bootstrap interval.

- pass/fail: the judge "passes" an item when its score is at least `review.pass_score`; agreement is the share of
  labelled items where that matches the person's pass/fail.
- grades: Spearman rank correlation between the judge's scores and the person's 1-5 grades.
- pairwise: the share of items where the judge's both-orders verdict (win / loss / tie against the champion)
  matches the person's blind choice.
The judge counts as calibrated on this test split when pass/fail agreement reaches `review.min_agreement` over at
least `review.min_items` items - the methodology's "agree 80%+ on ~20 examples".
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

from sftjudge.config import ReviewConfig
from sftjudge.judge.pairwise import bootstrap_ci

VERDICT_SIDE = {"win": "run", "loss": "champion", "tie": "tie"}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def spearman_ci(xs: list[float], ys: list[float], *, resamples: int = 1000, level: float = 0.95,
                seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of Spearman's rho over item resamples (seeded)."""
    rng = random.Random(seed)
    n, values = len(xs), []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        rho = _spearman([xs[i] for i in picks], [ys[i] for i in picks])
        if rho is not None:
            values.append(rho)
    if len(values) < resamples // 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    return round(values[int(tail * (len(values) - 1))], 4), round(values[int((1 - tail) * (len(values) - 1))], 4)


def _rate(hits: list[float], level: float) -> dict[str, Any]:
    ci = bootstrap_ci(hits, level=level)
    return {"items": len(hits), "agreement": round(sum(hits) / len(hits), 4) if hits else None,
            "ci": [round(ci[0], 4), round(ci[1], 4)] if ci else None}


def agreement(sample: list[dict[str, Any]], labels: dict[str, dict[str, Any]], pairwise: dict[str, str],
              settings: ReviewConfig, *, judge: str, ci_level: float = 0.95) -> dict[str, Any]:
    """Judge-human agreement on the labelled sample items. `pairwise` maps item id to the judge's both-orders
    outcome (win / loss / tie / unparseable) against the champion.

    >>> sample = [{"id": str(i), "judge_score": s} for i, s in enumerate([9.0, 8.5, 3.0, 2.0])]
    >>> labels = {"0": {"passed": True, "grade": 5}, "1": {"passed": True, "grade": 4},
    ...           "2": {"passed": False, "grade": 2}, "3": {"passed": True, "grade": 1}}
    >>> result = agreement(sample, labels, {}, ReviewConfig(min_items=4), judge="j")
    >>> result["pass_fail"]["agreement"], result["grades"]["spearman"], result["calibrated"]
    (0.75, 1.0, False)
    """
    scores = {item["id"]: item["judge_score"] for item in sample}
    labelled = [(i, labels[i]) for i in scores if i in labels and scores[i] is not None]
    passes = [float((scores[i] >= settings.pass_score) == label["passed"]) for i, label in labelled
              if label.get("passed") is not None]
    graded = [(scores[i], label["grade"]) for i, label in labelled if label.get("grade") is not None]
    chosen = [float(VERDICT_SIDE.get(pairwise.get(i, "")) == label["choice"]) for i, label in labelled
              if label.get("choice") and pairwise.get(i) in VERDICT_SIDE]
    pass_fail = _rate(passes, ci_level)
    rho = _spearman([s for s, _ in graded], [g for _, g in graded])
    calibrated = bool(pass_fail["agreement"] is not None and pass_fail["items"] >= settings.min_items
                      and pass_fail["agreement"] >= settings.min_agreement)
    if pass_fail["items"] < settings.min_items:
        status = (f"not yet calibrated on this test split: {pass_fail['items']} items labelled pass/fail, "
                  f"{settings.min_items} needed")
    elif not calibrated:
        status = (f"not calibrated on this test split: the judge agrees with the reviewer on "
                  f"{pass_fail['agreement']:.0%} of {pass_fail['items']} items, below {settings.min_agreement:.0%}")
    else:
        status = (f"calibrated on this test split: agreement {pass_fail['agreement']:.0%} on "
                  f"{pass_fail['items']} items (bar {settings.min_agreement:.0%} on {settings.min_items})")
    return {"judge": judge, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pass_score": settings.pass_score, "pass_fail": pass_fail,
            "grades": {"items": len(graded), "spearman": round(rho, 4) if rho is not None else None,
                       "ci": spearman_ci([s for s, _ in graded], [g for _, g in graded], level=ci_level)
                       if rho is not None else None},
            "pairwise": _rate(chosen, ci_level), "calibrated": calibrated, "status": status}


def agreement_lines(result: dict[str, Any]) -> list[str]:
    """The agreement as short lines for the report and `sftjudge show`."""
    def rate(part: dict[str, Any], what: str) -> str:
        if not part.get("items"):
            return f"{what}: no labels"
        ci = f" (95% CI {part['ci'][0]:.0%}-{part['ci'][1]:.0%})" if part.get("ci") else ""
        return f"{what}: {part['agreement']:.0%} of {part['items']} items{ci}"

    grades = result["grades"]
    rho = ("grades: no Spearman (fewer than 3 graded items, or no spread)" if grades["spearman"] is None else
           f"grades: Spearman {grades['spearman']:.2f} over {grades['items']} items"
           + (f" (95% CI {grades['ci'][0]:.2f} to {grades['ci'][1]:.2f})" if grades.get("ci") else ""))
    return [result["status"], rate(result["pass_fail"], f"pass/fail (judge passes at >= {result['pass_score']})"),
            rho, rate(result["pairwise"], "pairwise vs the champion")]
