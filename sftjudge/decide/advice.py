"""The reading of a run's curves and scores in words: overfitting diagnoses and next-step advice.

Follows the Iterative Training Workflow decision tree (healthy and better: refine; healthy, not better: data
quality; overfitting: an earlier checkpoint, fewer epochs, a lower learning rate; severe: more data) and the
methodology's loop - evaluate, find the weakest dimension, add examples targeting it - with its table of
symptoms and fixes.
"""

from __future__ import annotations

from sftjudge.decide.records import DecideRules, Decision, RunResult

# The weakest rubric dimension, and what the methodology's symptoms-and-fixes table says to do about it.
DIMENSION_FIXES = {
    "accuracy": "wrong facts, values or fields: add examples of the inputs it gets wrong and remove contradicting "
                "labels (bad on everything: check data quality and format, aim for 500+ examples)",
    "completeness": "answers partial or cut off mid-sentence: raise sft.max_seq_len (and generate.max_new_tokens), "
                    "and make sure the training answers are complete",
    "format": "the answer's form is off: add examples in exactly the target format (structure, JSON fields, "
              "length) and check the format metric",
    "clarity": "right answers in the wrong tone or style: add DPO preference pairs (200-300: chosen with the right "
               "tone, rejected with the wrong one) - SFT teaches what to say, DPO how to say it",
}


def overfitting_note(run: RunResult, min_rise: float = 0.0, min_relative_rise: float = 0.0) -> str | None:
    """The val-rises-while-train-falls reading in words; None when the curves do not show it, or val rose less
    than `min_rise` nats or less than `min_relative_rise` of its minimum (near zero loss, a rise of 0.0003 is
    noise, not memorisation).

    >>> run = RunResult(run_id="r", judge_score=5, train_loss=0.2, val_loss=0.5, test_fingerprint="t",
    ...                 judge_key="j", train_losses=(0.5, 0.3, 0.2), val_losses=(0.6, 0.5, 0.7))
    >>> print(overfitting_note(run))
    overfitting: val loss rose after epoch 2 (0.5000 -> 0.7000) while train loss fell (0.3000 -> 0.2000); the epoch-2 checkpoint was judged
    >>> overfitting_note(run, min_rise=0.25) is None
    True
    """
    if not val_rising_while_train_falls(run):
        return None
    rise = run.val_losses[-1] - min(run.val_losses)
    if rise < min_rise or rise < min_relative_rise * min(run.val_losses):
        return None
    best = run.val_losses.index(min(run.val_losses))
    return (f"overfitting: val loss rose after epoch {best + 1} ({run.val_losses[best]:.4f} -> "
            f"{run.val_losses[-1]:.4f}) while train loss fell ({run.train_losses[best]:.4f} -> "
            f"{run.train_losses[-1]:.4f}); the epoch-{best + 1} checkpoint was judged")


def severely_overfit(run: RunResult, rules: DecideRules) -> bool:
    """Val/train ratio at the chosen epoch above the limit, with a loss difference large enough to mean it."""
    return (run.val_train_ratio > rules.decide.max_val_train_ratio
            and run.val_loss - run.train_loss >= rules.decide.min_overfit_gap)


def val_rising_while_train_falls(run: RunResult) -> bool:
    """The classic overfitting signature in the last epochs.

    >>> val_rising_while_train_falls(RunResult(run_id="r", judge_score=5, train_loss=0.2, val_loss=0.5,
    ...                                        test_fingerprint="t", judge_key="j", train_losses=(0.5, 0.3, 0.2),
    ...                                        val_losses=(0.6, 0.5, 0.55)))
    True
    """
    t, v = run.train_losses, run.val_losses
    return len(v) >= 2 and v[-1] > min(v) and t[-1] < t[-2]


def advice(run: RunResult, champion: RunResult | None, decision: Decision, rules: DecideRules) -> list[str]:
    """Next steps from the Iterative Training Workflow decision tree, then what the weakest dimension calls for."""
    return _curve_advice(run, decision, rules) + weakest_dimension(run.dimensions)


def weakest_dimension(dimensions: dict[str, float]) -> list[str]:
    """The methodology's next step for the lowest-scored rubric dimension (none when there are no dimensions).

    >>> weakest_dimension({"accuracy": 8.1, "completeness": 7.9, "format": 8.4, "clarity": 5.2})[0][:60]
    'weakest dimension: clarity (5.2/10 against accuracy 8.1, com'
    >>> weakest_dimension({})
    []
    """
    if not dimensions:
        return []
    name = min(dimensions, key=dimensions.get)
    others = ", ".join(f"{n} {s:.1f}" for n, s in dimensions.items() if n != name)
    fix = DIMENSION_FIXES.get(name, "add examples that target it")
    return [f"weakest dimension: {name} ({dimensions[name]:.1f}/10 against {others}): {fix}"]


def _curve_advice(run: RunResult, decision: Decision, rules: DecideRules) -> list[str]:
    ratio = run.val_train_ratio
    severe = severely_overfit(run, rules)
    overfit = severe or overfitting_note(run, rules.decide.min_overfit_gap, rules.decide.min_val_rise) is not None
    if not overfit:
        if decision.action == "promote":
            return ["curves healthy and the eval improved: refine further, one variable at a time "
                    "(e.g. learning rate, then epochs, then batch size)"]
        return ["curves healthy but the eval did not improve: a data-quality issue is the likeliest cause - "
                "filter contradicting or 'correct but not ideal' examples, or add examples of the inputs the model "
                "fails on (see the lowest-scored items in judgments.jsonl)"]
    if severe:
        if run.train_rows and run.train_rows < 1000:
            return [f"severe overfitting (val/train {ratio:.2f}) on a small dataset ({run.train_rows} training "
                    f"rows): add more data before anything else"]
        return [f"severe overfitting (val/train {ratio:.2f}): lower the learning rate dramatically (0.1-0.3x)"]
    best = run.val_losses.index(min(run.val_losses)) + 1 if run.val_losses else None
    return [f"overfitting in the last epochs (val loss rose after epoch {best} while train loss fell): the best "
            f"epoch's checkpoint was used; next time train {best} epoch(s) or lower the learning rate"]
