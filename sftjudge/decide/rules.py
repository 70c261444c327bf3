"""Promote, hold or roll back: a pure function of the challenger's and the champion's results and fixed rules.

Rules follow the Iterative Training Workflow: training fit and answer quality are separate readings.
- gates: an overfitting run (val/train loss ratio above the limit), an invalid judge signal, a score below the
  floor, too many unparseable judgments or contaminated test rows, a regression-suite category that lost more
  than the allowed points against the base model (alignment tax): never promoted;
- quality: per-item paired judge-score differences against the champion on the same test items, with a
  bootstrap confidence interval. Promote only when the whole interval clears the noise floor and the mean gain
  reaches `min_improvement`; roll back when it is significantly worse; hold (keep the champion) otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from typing import Any

from sftjudge.decide.advice import advice, overfitting_note, severely_overfit
from sftjudge.decide.consistency import contested, readings
from sftjudge.decide.length import length_controlled, length_note
from sftjudge.decide.records import DecideRules, Decision, RunResult
from sftjudge.judge.pairwise import bootstrap_ci


def decide(challenger: RunResult, champion: RunResult | None, rules: DecideRules) -> Decision:
    """Return the decision, every reason behind it, hygiene warnings and next-step advice.

    >>> from sftjudge.config import RunConfig
    >>> rules = DecideRules.from_config(RunConfig())
    >>> def run(run_id, score, items=30):
    ...     return RunResult(run_id=run_id, judge_score=score, train_loss=0.5, val_loss=0.6, test_fingerprint="t",
    ...                      judge_key="j", item_scores={str(i): score for i in range(items)})
    >>> decide(run("b", 7.0), None, rules).action
    'promote'
    >>> decide(run("b", 7.0), run("a", 6.5), rules).action
    'promote'
    >>> decide(run("b", 7.0), run("a", 6.9), rules).action
    'hold'
    >>> decide(run("b", 9.0, items=9), run("a", 3.0, items=9), rules).reasons[0][:50]
    'too few items to decide: 9 test items scored in bo'
    """
    # The suite's blockers and warnings come from one pass of the gate (it bootstraps every category).
    suite_blockers, suite_warnings = regression_gate(challenger.regression, rules.decide.max_alignment_tax,
                                                     rules.decide.min_regression_score, rules.decide.ci_level)
    blockers = gate_failures(challenger, rules) + suite_blockers
    comparison: dict[str, Any] = {"challenger": _summary(challenger)}
    disputes = _cross_checks(challenger, champion, rules, comparison)
    if champion is None:
        if blockers:
            decision = Decision("rollback", blockers + ["no champion yet; this run does not qualify to become one"],
                                None, comparison)
        elif too_few := _too_few_items(len(challenger.item_scores), rules, "scored"):
            decision = Decision("hold", [too_few, "no champion yet; none is made from this run"], None, comparison)
        elif disputes:
            decision = Decision("hold", disputes + ["no champion yet; none is made on a contested judge signal"],
                                None, comparison)
        else:
            decision = Decision("promote", ["first qualifying run: becomes the champion"], None, comparison)
        decision.warnings = suite_warnings
        decision.advice = advice(challenger, None, decision, rules)
        return _with_diagnosis(decision, challenger, rules)
    comparison["champion"] = _summary(champion)
    not_comparable = _comparability_failures(challenger, champion)
    if blockers:  # a gated run is rolled back whatever the comparison would have said
        decision = Decision("rollback", blockers + not_comparable + [f"keeping champion {champion.run_id}"],
                            champion.run_id, comparison)
    elif not_comparable:
        decision = Decision("hold", not_comparable + [f"keeping champion {champion.run_id}"], champion.run_id,
                            comparison)
    else:
        decision = _quality_decision(challenger, champion, rules, comparison)
        if disputes and decision.action != "hold":  # the judge's verdict is what is disputed: nobody acts on it
            decision = Decision("hold", disputes + [f"the judge alone would have said {decision.action}: "
                                                    + decision.reasons[0], f"keeping champion {champion.run_id}"],
                                champion.run_id, comparison)
    decision.warnings = hygiene_warnings(challenger, champion) + suite_warnings
    decision.advice = advice(challenger, champion, decision, rules)
    return _with_diagnosis(decision, challenger, rules)


def _cross_checks(challenger: RunResult, champion: RunResult | None, rules: DecideRules,
                  comparison: dict[str, Any]) -> list[str]:
    """Reasons the judge signal is contested (against the base model, against the champion); readings to
    `comparison["consistency"]`."""
    level = rules.decide.ci_level
    pairs = {"the base model": challenger.baseline_items}
    if champion is not None:
        pairs[f"champion {champion.run_id}"] = champion.items()
    disputes, shown = [], {}
    for against, theirs in pairs.items():
        found = readings(challenger.items(), theirs, level, rules.noise_floor)
        if found:
            shown[against] = [asdict(r) | {"direction": r.direction} for r in found]
            if reason := contested(found, against):
                disputes.append(reason)
    comparison["consistency"] = shown
    return disputes


def _too_few_items(items: int, rules: DecideRules, how: str) -> str | None:
    """The hold reason when `items` cannot carry a decision (decide.min_paired_items), else None."""
    needed = rules.decide.min_paired_items
    if items >= needed:
        return None
    return (f"too few items to decide: {items} test items {how}, at least {needed} needed "
            f"(decide.min_paired_items); a larger test split (data.test_ratio, more data) can carry a decision")


def detectable_difference(diffs: list[float]) -> float | None:
    """The smallest mean score difference these paired items can detect (80% power, 5% two-sided): 2.8 s / sqrt(n).

    >>> round(detectable_difference([1.0, -1.0] * 8), 3)
    0.723
    >>> detectable_difference([0.5]) is None
    True
    """
    if len(diffs) < 2:
        return None
    return 2.8 * statistics.stdev(diffs) / len(diffs) ** 0.5


def _with_diagnosis(decision: Decision, run: RunResult, rules: DecideRules) -> Decision:
    """Name overfitting in the reasons whenever the curves show it, also when the earlier checkpoint was used."""
    note = overfitting_note(run, rules.decide.min_overfit_gap, rules.decide.min_val_rise)
    if note and not any(r.startswith("overfitting") for r in decision.reasons):
        decision.reasons.insert(0, note)
    return decision


def gate_failures(run: RunResult, rules: DecideRules) -> list[str]:
    """Every gate the run fails but the regression suite's (`regression_gate`); any failure means it cannot be
    promoted."""
    reasons = []
    d = rules.decide
    if d.block_val_rise and (note := overfitting_note(run, d.min_overfit_gap, d.min_val_rise)):
        reasons.append(note + ": the schedule overshot (too many epochs or too high a learning rate)")
    if severely_overfit(run, rules):
        reasons.append(f"overfitting: val/train loss ratio {run.val_train_ratio:.2f} at the chosen epoch exceeds "
                       f"{rules.decide.max_val_train_ratio:.2f} (val {run.val_loss:.4f}, train {run.train_loss:.4f})")
    if not all(math.isfinite(x) for x in (run.train_loss, run.val_loss, *run.train_losses, *run.val_losses)):
        reasons.append(f"training diverged: a loss is not a finite number (train {run.train_loss}, val "
                       f"{run.val_loss}); lower the learning rate")
    state = "degraded" if run.judge_status == "degraded" else "invalid"
    reasons += [f"judge signal {state}: {problem}" for problem in run.judge_problems]
    if run.judge_score is None:
        reasons.append("no judge score: the judge produced no usable score for this run")
    elif run.judge_score < rules.decide.min_judge_score:
        reasons.append(f"judge score {run.judge_score:.2f} is below the floor of {rules.decide.min_judge_score:.2f}")
    if run.unparseable_rate > rules.max_unparseable_rate:
        reasons.append(f"unparseable judgments {run.unparseable_rate:.0%} exceed {rules.max_unparseable_rate:.0%}")
    if run.contaminated > rules.decide.max_contaminated:
        reasons.append(f"{run.contaminated} contaminated test/val rows exceed the allowed {d.max_contaminated}")
    return reasons


def paired_difference(challenger: RunResult, champion: RunResult, level: float = 0.95):
    """(mean per-item score difference, its bootstrap CI, items paired) over items both runs scored.

    Falls back to the difference of means with no interval when the runs share no per-item scores.
    """
    diffs = paired_diffs(challenger, champion)
    if not diffs:
        return challenger.judge_score - champion.judge_score, None, 0
    return sum(diffs) / len(diffs), bootstrap_ci(diffs, level=level), len(diffs)


def paired_diffs(challenger: RunResult, champion: RunResult) -> list[float]:
    """Per-item judge-score differences (challenger minus champion) over the items both runs scored, by item id."""
    return [challenger.item_scores[i] - champion.item_scores[i]
            for i in sorted(set(challenger.item_scores) & set(champion.item_scores))]


def _quality_decision(challenger: RunResult, champion: RunResult, rules: DecideRules,
                      comparison: dict[str, Any]) -> Decision:
    delta, ci, paired = paired_difference(challenger, champion, rules.decide.ci_level)
    comparison.update(judge_score_delta=round(delta, 4), delta_ci=None if ci is None else [round(c, 4) for c in ci],
                      paired_items=paired, noise_floor=rules.noise_floor)
    control = length_controlled(challenger.scored_texts(), champion.scored_texts(), level=rules.decide.ci_level)
    comparison["length_control"] = control
    equal_length = ""
    if control and control["beyond_noise"]:  # the judge rewards length here: decide on the difference without it
        delta, ci, equal_length = control["controlled"], tuple(control["controlled_ci"]), " at equal answer length"
    interval = (f" ({rules.decide.ci_level:.0%} CI {ci[0]:+.2f} to {ci[1]:+.2f} over {paired} paired items)" if ci
                else " (no paired items)")
    score_note = (f"judge score {challenger.judge_score:.2f} vs champion {champion.judge_score:.2f}: "
                  f"{delta:+.2f}{equal_length}{interval}")
    if equal_length:
        score_note += f"; {length_note(control, f'champion {champion.run_id}')}"
    ratio_note = (f"val/train loss ratio {challenger.val_train_ratio:.2f} (champion {champion.val_train_ratio:.2f}, "
                  f"limit {rules.decide.max_val_train_ratio:.2f})")
    low, high = ci if ci else (delta, delta)
    keep = f"keeping champion {champion.run_id}"
    detectable = detectable_difference(paired_diffs(challenger, champion))
    comparison["detectable_difference"] = None if detectable is None else round(detectable, 4)
    if too_few := _too_few_items(paired, rules, "scored in both runs"):
        return Decision("hold", [too_few, score_note, keep], champion.run_id, comparison)
    if low > rules.noise_floor and delta >= rules.decide.min_improvement:
        return Decision("promote", [f"{score_note}: better beyond the noise floor of {rules.noise_floor:.2f} and "
                                    f"by at least {rules.decide.min_improvement}", ratio_note], champion.run_id,
                            comparison)
    if high < -rules.noise_floor:
        return Decision("rollback", [f"{score_note}: significantly worse than the champion", ratio_note, keep],
                        champion.run_id, comparison)
    why = ("the gain is below the required improvement of " f"{rules.decide.min_improvement}" if low > rules.noise_floor
           else f"the difference is within the noise (interval reaches {low:+.2f}, noise floor "
                f"{rules.noise_floor:.2f})")
    return Decision("hold", [f"{score_note}: {why}", ratio_note, keep], champion.run_id, comparison)


def _comparability_failures(run: RunResult, champion: RunResult) -> list[str]:
    reasons = []
    if run.test_fingerprint != champion.test_fingerprint:
        reasons.append("not comparable: the test split differs from the champion's (different data or split "
                       "settings); scores on different test sets say nothing about which model is better")
    if run.judge_key != champion.judge_key:
        reasons.append(f"not comparable: judged by {run.judge_key}, the champion by {champion.judge_key}")
    return reasons


IGNORED_SETTINGS = ("name", "runs_dir", "home", "threads", "memory_check", "tracking")


def _default_settings() -> dict[str, Any]:
    from sftjudge.config import RunConfig
    from sftjudge.config_yaml import flatten

    return flatten(RunConfig().model_dump(mode="json"))


def hygiene_warnings(run: RunResult, champion: RunResult) -> list[str]:
    """Warn when more than one variable changed against the champion: the result cannot be attributed."""
    if not run.settings or not champion.settings:
        return []
    # A setting one config lacks (added to sftjudge after the champion ran) counts at its default: an upgrade that
    # adds settings is not a changed experiment.
    defaults = _default_settings()
    changed = sorted(k for k in set(run.settings) | set(champion.settings)
                     if not k.startswith(IGNORED_SETTINGS)
                     and run.settings.get(k, defaults.get(k)) != champion.settings.get(k, defaults.get(k)))
    if len(changed) > 1:
        return [f"{len(changed)} settings changed against the champion ({', '.join(changed[:8])}"
                f"{', ...' if len(changed) > 8 else ''}): change one variable per experiment to know what helped"]
    return []


def _summary(run: RunResult) -> dict[str, Any]:
    return {"run_id": run.run_id, "judge_score": run.judge_score, "train_loss": run.train_loss,
            "val_loss": run.val_loss, "val_train_ratio": round(run.val_train_ratio, 4),
            "test_fingerprint": run.test_fingerprint, "judge": run.judge_key,
            "regression": {name: c["run"] for name, c in (run.regression or {}).get("categories", {}).items()}}


def regression_gate(regression: dict[str, Any] | None, max_tax: float | None, min_score: float | None,
                    level: float = 0.95) -> tuple[list[str], list[str]]:
    """(blockers, warnings) from the regression suite, each judged on an interval over items, not a point.

    A category blocks when its tax exceeds `max_tax` over its whole bootstrap interval of per-item losses; above
    the limit in the mean only, it is a warning (4 items cannot tell 3 points of loss from noise). The mean blocks
    when its whole interval is below `min_score`. Summaries without per-item values (judged before intervals
    existed) are judged on their point values.

    >>> reg = {"categories": {"safety": {"items": 4, "run": 3.0, "base": 7.5, "tax": 4.5,
    ...                                  "item_taxes": [4.5, 4.0, 5.0, 4.5]}}, "run_mean": 3.0}
    >>> print(regression_gate(reg, 2.0, None)[0][0])
    alignment tax: 'safety' fell from 7.50 (base model) to 3.00, -4.50 points over 4 items (95% CI 4.12 to 4.88; limit 2.00)
    >>> noisy = {"categories": {"writing": {"items": 4, "run": 3.35, "base": 7.0, "tax": 3.65,
    ...                                     "item_taxes": [9.0, 6.6, 0.0, -1.0]}}, "run_mean": 3.35}
    >>> blockers, warnings = regression_gate(noisy, 2.0, None)
    >>> blockers, warnings[0].startswith("alignment tax: 'writing' lost 3.65 points over 4 items")
    ([], True)
    >>> regression_gate(None, 2.0, 5.0)
    ([], [])
    """
    if not regression:
        return [], []
    blockers, warnings = [], []
    percent = f"{level:.0%}"
    if max_tax is not None:
        for name, c in regression["categories"].items():
            if c["tax"] is None or c["tax"] <= max_tax:
                continue
            low, high = bootstrap_ci(c.get("item_taxes") or [c["tax"]], level=level)
            interval = f"{percent} CI {low:.2f} to {high:.2f}; limit {max_tax:.2f}"
            if low > max_tax:
                blockers.append(f"alignment tax: {name!r} fell from {c['base']:.2f} (base model) to {c['run']:.2f}, "
                                f"-{c['tax']:.2f} points over {c['items']} items ({interval})")
            else:
                warnings.append(f"alignment tax: {name!r} lost {c['tax']:.2f} points over {c['items']} items, above "
                                f"the limit in the mean but not over its interval ({interval}): too few items to "
                                f"tell; add suite items in that category or check its answers in the report")
    mean = regression.get("run_mean")
    if min_score is not None and mean is not None and mean < min_score:
        high = bootstrap_ci(regression.get("run_scores") or [mean], level=level)[1]
        if high < min_score:
            blockers.append(f"regression suite mean {mean:.2f} is below the floor of {min_score:.2f} "
                            f"({percent} CI up to {high:.2f})")
        else:
            warnings.append(f"regression suite mean {mean:.2f} is below the floor of {min_score:.2f}, but its "
                            f"interval reaches {high:.2f}")
    return blockers, warnings
