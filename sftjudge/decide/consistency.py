"""Cross-checking the judge: does its verdict point the same way as the reference-based metrics?

The judge is one model's opinion; ROUGE-L, token F1 and the semantic similarity of an answer to its reference
are crude but cannot be fooled by a long, confident answer. On the same paired items, each signal's mean
difference gets a bootstrap interval. When the judge says one answer set is better beyond its interval and a
reference metric says, beyond its own interval, that it is worse, the judge signal is *contested*: a person
should look before anything is promoted or rolled back on the judge score. (Seen on dialogue summaries: ROUGE-L
0.24 -> 0.48 and token F1 0.17 -> 0.47 for the fine-tune, while the judge scored the base model's chatty
continuations 5.76 and the fine-tune's summaries 3.87.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftjudge.judge.pairwise import bootstrap_ci

# Reference-based signals every judgment carries (judgments.jsonl "metrics"), with their names in reasons.
SIGNALS = {"rouge_l": "ROUGE-L", "token_f1": "token F1", "similarity": "semantic similarity"}
MIN_ITEMS = 5  # fewer paired items give intervals too wide to contest anything
# Differences smaller than these are no direction at all, however tight their interval: a random judge that scores
# every answer 5.50 +- 0.01 is "sure" of a 0.003-point difference that means nothing.
MIN_JUDGE_POINTS = 0.1
MIN_METRIC = 0.01


@dataclass(frozen=True, kw_only=True)
class Reading:
    """One signal's paired difference (this run minus the other) over the shared items."""

    signal: str
    mean: float
    low: float
    high: float
    smallest: float  # the least difference that counts as a direction for this signal

    @property
    def direction(self) -> int:
        """+1 better, -1 worse, 0 when the interval holds zero or the difference is too small to matter."""
        if abs(self.mean) < self.smallest:
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def describe(self) -> str:
        return f"{self.signal} {self.mean:+.2f} (CI {self.low:+.2f} to {self.high:+.2f})"


def readings(mine: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]], level: float,
             judge_noise: float = 0.0) -> list[Reading] | None:
    """The judge's and each reference metric's paired reading; None with too few shared scored items.

    `mine` and `theirs` map item id -> {"score": judge score, "metrics": {"rouge_l": ..., "token_f1": ...}}. A
    judge difference counts as a direction only above `judge_noise` (the measured noise floor) and 0.1 points.
    """
    shared = sorted(i for i in set(mine) & set(theirs)
                    if mine[i].get("score") is not None and theirs[i].get("score") is not None)
    if len(shared) < MIN_ITEMS:
        return None
    out = [_reading("judge", [mine[i]["score"] - theirs[i]["score"] for i in shared], level,
                    max(judge_noise, MIN_JUDGE_POINTS))]
    for key, name in SIGNALS.items():
        diffs = [mine[i]["metrics"][key] - theirs[i]["metrics"][key] for i in shared
                 if key in (mine[i].get("metrics") or {}) and key in (theirs[i].get("metrics") or {})]
        if len(diffs) >= MIN_ITEMS:
            out.append(_reading(name, diffs, level, MIN_METRIC))
    return out


def _reading(signal: str, diffs: list[float], level: float, smallest: float) -> Reading:
    low, high = bootstrap_ci(diffs, level=level)
    return Reading(signal=signal, mean=sum(diffs) / len(diffs), low=low, high=high, smallest=smallest)


def contested(found: list[Reading] | None, against: str) -> str | None:
    """The reason the judge signal is contested against `against` (e.g. "the base model"), or None.

    >>> judge = Reading(signal="judge", mean=1.9, low=1.2, high=2.5, smallest=0.1)
    >>> rouge = Reading(signal="ROUGE-L", mean=-0.24, low=-0.30, high=-0.18, smallest=0.01)
    >>> contested([judge, rouge], "the base model")[:66]
    'judge signal contested against the base model: the judge says this'
    >>> contested([judge, Reading(signal="ROUGE-L", mean=0.1, low=-0.05, high=0.2, smallest=0.01)], "x") is None
    True
    >>> tiny = Reading(signal="judge", mean=-0.003, low=-0.004, high=-0.002, smallest=0.1)  # sure, but of nothing
    >>> contested([tiny, rouge], "the base model") is None
    True
    """
    if not found:
        return None
    judge, metrics = found[0], found[1:]
    against_judge = [m for m in metrics if judge.direction and m.direction == -judge.direction]
    if not against_judge:
        return None
    verdict = "better" if judge.direction > 0 else "worse"
    return (f"judge signal contested against {against}: the judge says this run is {verdict} "
            f"({judge.describe()}), but {' and '.join(m.describe() for m in against_judge)} say the opposite "
            f"on the same items; look at the answers (report: side by side) before trusting either")
