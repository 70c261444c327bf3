"""Pairwise comparison with both answer orders: position bias is measured and cancelled, not left to the user.

Each item is judged twice, challenger first (as A) and champion first. With label probabilities (logprob judges)
the verdict averages each side's probability over the two orders - P(challenger) = (P(A | challenger first) +
P(B | champion first)) / 2 - so a judge that leans to one position leans the same in both and the lean cancels; on
public AlpacaEval answers (bench/agreement.py) the embedded judge's averaged verdict picked the better model in 15
of 16 items where "both orders must agree" picked it in 5. Without probabilities (text judges) a pair counts as a
win (or a loss) only when both orders agree; disagreement is a tie. Swap consistency - how often the two orders'
own labels agree - is reported either way: it measures the judge, not the verdict.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# The pairwise judge's labels: A = first answer better, B = second better, C = equally good.
FIRST, SECOND, TIE = "A", "B", "C"


@dataclass(frozen=True)
class PairOutcome:
    id: str
    challenger_first: str | None  # the judge's label with the challenger shown as A (None: unparseable)
    champion_first: str | None  # the label with the champion shown as A
    outcome: str  # "win" | "loss" | "tie" | "unparseable", from the challenger's side
    consistent: bool  # both orders named the same winner (or both a tie)


def _winner(label: str | None, challenger_is_a: bool) -> str | None:
    """Who the judge preferred in one order: 'challenger', 'champion', 'tie' or None."""
    if label is None:
        return None
    if label == TIE:
        return "tie"
    a_wins = label == FIRST
    return "challenger" if a_wins == challenger_is_a else "champion"


def combine_orders(item_id: str, challenger_first: str | None, champion_first: str | None,
                   first_probs: dict[str, float] | None = None,
                   second_probs: dict[str, float] | None = None) -> PairOutcome:
    """Combine the two orders of one item into one outcome (see the module's docstring).

    >>> combine_orders("x", "A", "B").outcome      # challenger preferred in both positions
    'win'
    >>> combine_orders("x", "A", "A").outcome      # always the first answer: position bias, no winner
    'tie'
    >>> combine_orders("x", "A", "A").consistent
    False
    >>> combine_orders("x", "B", "A").outcome
    'loss'
    >>> combine_orders("x", None, "A").outcome
    'unparseable'
    >>> leans_to_a = combine_orders("x", "A", "A", {"A": 0.9, "B": 0.1}, {"A": 0.6, "B": 0.4})
    >>> leans_to_a.outcome, leans_to_a.consistent    # A either way, but far more so with the challenger as A
    ('win', False)
    """
    w1, w2 = _winner(challenger_first, True), _winner(champion_first, False)
    if w1 is None or w2 is None:
        return PairOutcome(item_id, challenger_first, champion_first, "unparseable", False)
    consistent = w1 == w2
    if first_probs and second_probs:
        sides = {"win": first_probs.get(FIRST, 0.0) + second_probs.get(SECOND, 0.0),
                 "loss": first_probs.get(SECOND, 0.0) + second_probs.get(FIRST, 0.0),
                 "tie": first_probs.get(TIE, 0.0) + second_probs.get(TIE, 0.0)}
        return PairOutcome(item_id, challenger_first, champion_first, max(sides, key=sides.get), consistent)
    if consistent and w1 == "challenger":
        outcome = "win"
    elif consistent and w1 == "champion":
        outcome = "loss"
    else:
        outcome = "tie"
    return PairOutcome(item_id, challenger_first, champion_first, outcome, consistent)


def win_rate(outcomes: list[PairOutcome]) -> float | None:
    """(wins + half the ties) / judged pairs; None when no pair could be judged."""
    judged = [o for o in outcomes if o.outcome != "unparseable"]
    if not judged:
        return None
    return sum(1.0 if o.outcome == "win" else 0.5 if o.outcome == "tie" else 0.0 for o in judged) / len(judged)


def bootstrap_ci(values: list[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean of `values` (seeded, so reports are reproducible).

    >>> bootstrap_ci([1.0] * 10)
    (1.0, 1.0)
    >>> low, high = bootstrap_ci([0.0, 1.0] * 20)
    >>> 0.3 < low < 0.5 < high < 0.7
    True
    """
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]


def summarise(outcomes: list[PairOutcome]) -> dict[str, Any]:
    """Counts, win rate with its bootstrap CI, and swap consistency for a report."""
    judged = [o for o in outcomes if o.outcome != "unparseable"]
    points = [1.0 if o.outcome == "win" else 0.5 if o.outcome == "tie" else 0.0 for o in judged]
    ci = bootstrap_ci(points)
    return {
        "pairs": len(outcomes),
        "wins": sum(o.outcome == "win" for o in outcomes),
        "losses": sum(o.outcome == "loss" for o in outcomes),
        "ties": sum(o.outcome == "tie" for o in outcomes),
        "unparseable": sum(o.outcome == "unparseable" for o in outcomes),
        "win_rate": None if not judged else round(win_rate(outcomes), 4),
        "win_rate_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        "swap_consistency": round(sum(o.consistent for o in judged) / len(judged), 4) if judged else None,
        "first_position_rate": _first_position_rate(judged),
    }


def _first_position_rate(outcomes: list[PairOutcome]) -> float | None:
    """How often the judge picked answer A (ties excluded): 0.5 is unbiased, near 1.0 is 'always A'."""
    labels = [label for o in outcomes for label in (o.challenger_first, o.champion_first) if label in (FIRST, SECOND)]
    return round(sum(label == FIRST for label in labels) / len(labels), 4) if labels else None


def outcome_json(outcome: PairOutcome) -> dict[str, Any]:
    return asdict(outcome)
