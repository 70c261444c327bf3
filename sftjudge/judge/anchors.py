"""The reference-anchored scale: where a judge score sits between an empty answer and the reference itself.

A raw 5.4/10 says little: this judge may give an empty answer 3 and the reference 9.4. So every test item is also
judged with the reference as the candidate (the ceiling) and with an empty answer (the floor), and a set of
answers is reported as `(score - empty) / (reference - empty)` - "% of reference quality" - beside its raw score.
Anchors depend only on the item and the judge, so they are cached under $SFTJUDGE_HOME/anchors/ per judge
identity and computed once for every run on the same test split.
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import Any

from sftjudge.judge.cache import JudgmentCache, judge_cached
from sftjudge.judge.spec import JudgeSpec, judge_item
from sftjudge.run.io import exclusive

MIN_SPAN = 0.5  # score points between floor and ceiling below which the scale means nothing for this judge
# Below this many points between an empty answer and the reference, the judge barely tells no answer from the right
# one (seen: Qwen2.5-1.5B gives an empty answer 7.8 and the reference 9.2 on short factual questions).
MIN_USEFUL_SPAN = 3.0


def anchor_scores(loaded, spec: JudgeSpec, generations: list[dict[str, Any]], home: Path,
                  batch_size: int) -> dict[str, dict[str, float | None]]:
    """Per test item id: {"reference": score of the reference as the answer, "empty": score of an empty answer}.

    `loaded` is the stage's judge (LoadedJudge or a fake with .scorer and .identity); judged items are kept in
    the per-judge anchor cache, so a second run on the same split judges nothing.
    """
    identity = loaded.identity(spec)
    path = Path(home) / "anchors" / f"{hashlib.sha256(identity.encode()).hexdigest()[:20]}.jsonl"
    ceiling = [judge_item(g) | {"answer": g["reference"]} for g in generations]
    floor = [judge_item(g) | {"answer": ""} for g in generations]
    with exclusive(path):
        cache = JudgmentCache(path).load()
        top = judge_cached(loaded.scorer(spec), cache, ceiling, identity, batch_size)
        bottom = judge_cached(loaded.scorer(spec), cache, floor, identity, batch_size)
    return {g["id"]: {"reference": t.get("score"), "empty": b.get("score")}
            for g, t, b in zip(generations, top, bottom)}


def normalised(scores: dict[str, float | None], anchors: dict[str, dict[str, float | None]]) -> float | None:
    """Mean score as a share of the way from the empty answer (0) to the reference (1), over shared items.

    >>> anchors = {"a": {"reference": 9.0, "empty": 3.0}, "b": {"reference": 9.0, "empty": 3.0}}
    >>> normalised({"a": 6.0, "b": 9.0}, anchors)
    0.75
    >>> normalised({"a": 6.0}, {"a": {"reference": 3.2, "empty": 3.0}}) is None  # the judge cannot tell them apart
    True
    """
    shared = [i for i, s in scores.items() if s is not None and i in anchors
              and anchors[i]["reference"] is not None and anchors[i]["empty"] is not None]
    if not shared:
        return None
    top = statistics.fmean(anchors[i]["reference"] for i in shared)
    bottom = statistics.fmean(anchors[i]["empty"] for i in shared)
    if top - bottom < MIN_SPAN:
        return None
    return round((statistics.fmean(scores[i] for i in shared) - bottom) / (top - bottom), 4)


def anchor_summary(anchors: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """Means of the two anchors for the report."""
    def mean(key: str) -> float | None:
        values = [a[key] for a in anchors.values() if a[key] is not None]
        return round(statistics.fmean(values), 4) if values else None

    return {"items": len(anchors), "reference_mean": mean("reference"), "empty_mean": mean("empty")}


def anchor_warnings(summary: dict[str, Any]) -> list[str]:
    """A judge-health warning when the anchors are close enough for the judge's scores to mean little.

    >>> anchor_warnings({"items": 30, "reference_mean": 9.17, "empty_mean": 6.77})[0][:58]
    'the judge gives an empty answer 6.77 and the reference 9.1'
    >>> anchor_warnings({"items": 30, "reference_mean": 9.4, "empty_mean": 3.0})
    []
    """
    span = _span(summary)
    if span is None or span >= MIN_USEFUL_SPAN:
        return []
    return [_compressed(summary, span) + "; use a stronger judge or check it against human labels"]


def anchor_degradation(summary: dict[str, Any], min_span: float) -> list[str]:
    """The health problem of a judge whose anchors sit less than `min_span` points apart (judge.health.
    min_anchor_span): its whole verdict lives in a sliver of the scale, where the noise floor and the required
    improvement are large parts of it.

    >>> [problem] = anchor_degradation({"items": 40, "reference_mean": 9.17, "empty_mean": 7.5}, 2.0)
    >>> problem.endswith("scale degraded: it does not decide; use a stronger judge (judge.model)")
    True
    >>> anchor_degradation({"items": 40, "reference_mean": 9.45, "empty_mean": 7.07}, 2.0)
    []
    """
    span = _span(summary)
    if min_span <= 0 or span is None or span >= min_span:  # 0: the check is off
        return []
    return [_compressed(summary, span) + f" (under judge.health.min_anchor_span {min_span}), scale degraded: it "
            f"does not decide; use a stronger judge (judge.model)"]


def _span(summary: dict[str, Any]) -> float | None:
    top, bottom = summary.get("reference_mean"), summary.get("empty_mean")
    return None if top is None or bottom is None else top - bottom


def _compressed(summary: dict[str, Any], span: float) -> str:
    return (f"the judge gives an empty answer {summary['empty_mean']:.2f} and the reference "
            f"{summary['reference_mean']:.2f} on these {summary['items']} items: it barely tells no answer from the "
            f"right one, so its scores are compressed into {span:.1f} points")
