"""Judge health: checks that make a run's judge signal invalid instead of silently wrong.

A judge that cannot answer (unparseable replies, no probability on the labels), that always picks one
position, that gives every item the same score, or that is smaller than the model it grades, does not get to
decide a promotion.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from sftjudge.config import JudgeHealthConfig


@dataclass
class JudgeHealth:
    valid: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    # "valid"; "degraded": the judge answers, but its scale is too compressed to decide on; "invalid"
    status: str = "valid"

    def degrade(self, reasons: list[str]) -> None:
        """A signal that works but cannot decide (a compressed scale): not valid, and said so apart from a broken
        judge."""
        if reasons:
            self.problems += reasons
            self.valid = False
            if self.status == "valid":
                self.status = "degraded"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def judge_health(judgments: list[dict[str, Any]], pairwise: dict[str, Any] | None, thresholds: JudgeHealthConfig,
                 *, judge_params: int | None = None, student_params: int | None = None) -> JudgeHealth:
    """Check pointwise judgments (dicts as in judgments.jsonl) and the pairwise summary against the thresholds.

    >>> bad = [{"score": None, "unparseable": "empty reply", "label_mass": None}] * 3
    >>> judge_health(bad, None, JudgeHealthConfig()).valid
    False
    >>> good = [{"score": s, "unparseable": None, "label_mass": 0.9} for s in (3.0, 7.5, 9.0)]
    >>> judge_health(good, None, JudgeHealthConfig()).valid
    True
    """
    problems: list[str] = []
    warnings: list[str] = []
    n = len(judgments)
    unparseable = sum(1 for j in judgments if j.get("unparseable"))
    scores = [j["score"] for j in judgments if j.get("score") is not None]
    masses = [j["label_mass"] for j in judgments if j.get("label_mass") is not None]
    measures: dict[str, Any] = {
        "items": n, "unparseable": unparseable, "unparseable_rate": round(unparseable / n, 4) if n else None,
        "score_stdev": round(statistics.pstdev(scores), 4) if len(scores) > 1 else None,
        "label_mass_mean": round(statistics.fmean(masses), 4) if masses else None,
    }
    truncated = sum(1 for j in judgments if j.get("truncated"))
    measures["truncated_rate"] = round(truncated / n, 4) if n else None
    if n and truncated / n > thresholds.max_truncated_rate:
        warnings.append(f"{truncated} of {n} judge prompts ({truncated / n:.0%}) had their answer cut to fit "
                        f"judge.max_prompt_tokens: the judge saw the opening and the ending of those answers only")
    if not n:
        problems.append("no items were judged")
    elif unparseable / n > thresholds.max_unparseable_rate:
        problems.append(f"unparseable rate {unparseable / n:.0%} exceeds {thresholds.max_unparseable_rate:.0%}")
    if masses and statistics.fmean(masses) < thresholds.min_label_mass:
        problems.append(f"mean probability on valid labels {statistics.fmean(masses):.2f} is below "
                        f"{thresholds.min_label_mass}: the judge mostly wanted to answer something else")
    if len(scores) > 1 and statistics.pstdev(scores) < thresholds.min_score_stdev:
        problems.append(f"scores barely vary (stdev {statistics.pstdev(scores):.3f} < {thresholds.min_score_stdev}):"
                        f" the judge is saturated and cannot tell answers apart")
    if pairwise and pairwise.get("swap_consistency") is not None:
        measures["swap_consistency"] = pairwise["swap_consistency"]
        measures["first_position_rate"] = pairwise.get("first_position_rate")
        if pairwise["swap_consistency"] < thresholds.min_swap_consistency:
            problems.append(f"swap consistency {pairwise['swap_consistency']:.0%} is below "
                            f"{thresholds.min_swap_consistency:.0%}: the verdict depends on answer order")
    if judge_params and student_params and judge_params < student_params:
        note = (f"the judge ({judge_params:,} parameters) is smaller than the student ({student_params:,}): "
                f"a weaker judge's scores collapse toward false positives")
        (problems if thresholds.block_smaller_judge else warnings).append(note)
    measures.update(judge_params=judge_params, student_params=student_params)
    return JudgeHealth(valid=not problems, problems=problems, warnings=warnings, measures=measures,
                       status="invalid" if problems else "valid")
