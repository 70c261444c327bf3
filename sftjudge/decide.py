"""Promote or roll back: a pure function of the challenger's and the champion's results and fixed rules.

Rules follow the Iterative Training Workflow: training fit and answer quality are separate readings. A run that
overfits (val/train loss ratio above the limit) is rolled back whatever its score; otherwise it must beat the
champion's judge score by a stated margin on the same test split, judged by the same judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class RunResult:
    """What decide needs to know about one run."""

    run_id: str
    judge_score: float | None
    train_loss: float
    val_loss: float
    test_fingerprint: str
    judge_key: str  # judge definition + judge model: scores from different judges are not comparable
    judge_problems: tuple[str, ...] = ()  # judge health failures: the score cannot be trusted to decide

    @property
    def val_train_ratio(self) -> float:
        return self.val_loss / self.train_loss if self.train_loss > 0 else float("inf")


@dataclass(frozen=True)
class DecideRules:
    min_improvement: float
    max_val_train_ratio: float
    min_judge_score: float


@dataclass
class Decision:
    action: Literal["promote", "rollback"]
    reasons: list[str]
    champion_before: str | None
    comparison: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger: RunResult, champion: RunResult | None, rules: DecideRules) -> Decision:
    """Return the decision and every reason behind it (all failing rules are listed, not just the first).

    >>> rules = DecideRules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0)
    >>> new = RunResult("b", 7.0, 0.5, 0.6, "t", "j")
    >>> decide(new, None, rules).action
    'promote'
    >>> decide(new, RunResult("a", 6.5, 0.5, 0.6, "t", "j"), rules).action
    'promote'
    >>> decide(new, RunResult("a", 6.9, 0.5, 0.6, "t", "j"), rules).reasons[0]
    'judge score 7.00 vs champion 6.90: +0.10 is below the required improvement of 0.25'
    """
    blockers = _gate_failures(challenger, rules)
    comparison: dict[str, Any] = {"challenger": asdict(challenger) | {"val_train_ratio": challenger.val_train_ratio}}
    if champion is None:
        if blockers:
            return Decision("rollback", blockers + ["no champion yet; this run does not qualify to become one"],
                            None, comparison)
        return Decision("promote", ["first qualifying run: becomes the champion"], None, comparison)
    comparison["champion"] = asdict(champion) | {"val_train_ratio": champion.val_train_ratio}
    reasons = blockers + _comparability_failures(challenger, champion)
    if reasons:
        return Decision("rollback", reasons + [f"keeping champion {champion.run_id}"], champion.run_id, comparison)
    delta = challenger.judge_score - champion.judge_score  # both set: gates and comparability passed
    comparison["judge_score_delta"] = round(delta, 4)
    ratio_note = (f"val/train loss ratio {challenger.val_train_ratio:.2f} "
                  f"(champion {champion.val_train_ratio:.2f}, limit {rules.max_val_train_ratio:.2f})")
    score_note = f"judge score {challenger.judge_score:.2f} vs champion {champion.judge_score:.2f}: {delta:+.2f}"
    if delta >= rules.min_improvement:
        return Decision("promote", [f"{score_note} meets the required improvement of {rules.min_improvement}",
                                    ratio_note], champion.run_id, comparison)
    return Decision("rollback", [f"{score_note} is below the required improvement of {rules.min_improvement}",
                                 ratio_note, f"keeping champion {champion.run_id}"], champion.run_id, comparison)


def _gate_failures(run: RunResult, rules: DecideRules) -> list[str]:
    reasons = []
    if run.val_train_ratio > rules.max_val_train_ratio:
        reasons.append(f"overfitting: val/train loss ratio {run.val_train_ratio:.2f} at the chosen epoch exceeds "
                       f"{rules.max_val_train_ratio:.2f} (val {run.val_loss:.4f}, train {run.train_loss:.4f})")
    for problem in run.judge_problems:
        reasons.append(f"judge signal invalid: {problem}")
    if run.judge_score is None:
        reasons.append("no judge score: the judge produced no usable score for this run")
    elif run.judge_score < rules.min_judge_score:
        reasons.append(f"judge score {run.judge_score:.2f} is below the floor of {rules.min_judge_score:.2f}")
    return reasons


def _comparability_failures(run: RunResult, champion: RunResult) -> list[str]:
    reasons = []
    if run.test_fingerprint != champion.test_fingerprint:
        reasons.append("not comparable: the test split differs from the champion's (different data or split "
                       "settings); scores on different test sets say nothing about which model is better")
    if run.judge_key != champion.judge_key:
        reasons.append(f"not comparable: judged by {run.judge_key}, the champion by {champion.judge_key}")
    return reasons
