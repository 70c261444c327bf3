import statistics
from dataclasses import replace

import pytest
from helpers import decide_rules

from sftjudge.decide.records import RunResult
from sftjudge.decide.rules import decide
from sftjudge.judge.metrics import FormatRule, aggregate, item_metrics

RULES = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=3.0)


def result(run_id, score, train=0.5, val=0.6, test="t", judge="j", **more):
    """A run scored `score` on one test item (enough for the rules under test; sample size is tested below)."""
    more.setdefault("item_scores", {"0": score} if score is not None else {})
    return RunResult(run_id=run_id, judge_score=score, train_loss=train, val_loss=val, test_fingerprint=test,
                     judge_key=judge, **more)


def test_item_metrics_on_json_answers():
    ref = '{"intent": "refund", "priority": "high"}'
    assert item_metrics(ref, ref) == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "bleu": 1.0,
                                      "json_valid": 1.0, "json_field_accuracy": 1.0}
    partial = item_metrics('{"intent": "refund", "priority": "low"}', ref)
    assert partial["json_field_accuracy"] == 0.5 and partial["exact_match"] == 0.0
    assert 0.5 < partial["rouge_l"] < 1.0 and 0.0 < partial["bleu"] < 1.0
    rule = FormatRule("json", schema={"type": "object", "required": ["intent", "priority", "product"]})
    assert item_metrics(ref, ref, rule)["format_compliance"] == 0.0
    assert item_metrics("not json", ref, FormatRule("json"))["format_compliance"] == 0.0
    assert aggregate([{"a": 1.0}, {"a": 0.0, "b": 1.0}]) == {"a": 0.5, "b": 1.0}


def scored(run_id, per_item):
    return RunResult(run_id=run_id, judge_score=sum(per_item) / len(per_item), train_loss=0.5, val_loss=0.6,
                     test_fingerprint="t", judge_key="j",
                     item_scores={str(i): v for i, v in enumerate(per_item)})


def test_first_run_promoted():
    decision = decide(result("a", 6.0), None, RULES)
    assert decision.action == "promote" and decision.champion_before is None


def test_paired_improvement_beyond_noise_is_promoted():
    champ = scored("a", [5.0, 6.0, 7.0, 5.5] * 10)
    better = scored("b", [6.0, 7.0, 7.5, 6.5] * 10)
    decision = decide(better, champ, RULES)
    assert decision.action == "promote"
    assert decision.comparison["paired_items"] == 40 and decision.comparison["delta_ci"][0] > 0


def test_noise_sized_difference_holds():
    champ = scored("a", [5.0, 6.0, 7.0, 5.5] * 10)
    noisy = scored("b", [5.5, 5.5, 7.5, 5.0] * 10)  # some up, some down: CI straddles zero
    decision = decide(noisy, champ, RULES)
    assert decision.action == "hold" and "within the noise" in decision.reasons[0]


def test_large_noise_floor_blocks_a_small_gain():
    champ = scored("a", [5.0, 6.0, 7.0, 5.5] * 10)
    better = scored("b", [5.4, 6.4, 7.4, 5.9] * 10)
    assert decide(better, champ, RULES).action == "promote"
    assert decide(better, champ, replace(RULES, noise_floor=0.5)).action == "hold"


def test_significantly_worse_rolls_back():
    champ = scored("a", [6.0, 7.0, 8.0, 6.5] * 10)
    worse = scored("b", [5.0, 6.0, 6.5, 5.0] * 10)
    decision = decide(worse, champ, RULES)
    assert decision.action == "rollback" and "significantly worse" in decision.reasons[0]


def test_overfitting_rolls_back_even_with_better_score_and_advises():
    decision = decide(result("b", 9.0, train=0.1, val=0.5), result("a", 6.0), RULES)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("overfitting: val/train loss ratio 5.00")
    assert "severe overfitting" in decision.advice[0]


def test_gates_and_comparability():
    assert decide(result("b", 2.0), None, RULES).action == "rollback"
    assert decide(result("b", None), None, RULES).action == "rollback"
    invalid = result("b", 9.0, 0.5, 0.6, judge_problems=("swap consistency 20% is below 60%",))
    assert "judge signal invalid: swap consistency" in decide(invalid, None, RULES).reasons[0]
    other_split = decide(result("b", 9.0, test="other"), result("a", 6.0), RULES)
    assert other_split.action == "hold" and "test split differs" in other_split.reasons[0]
    other_judge = decide(result("b", 9.0, judge="k"), result("a", 6.0), RULES)
    assert "not comparable: judged by k" in other_judge.reasons[0]
    contaminated = result("b", 9.0, 0.5, 0.6, contaminated=3)
    assert "contaminated" in decide(contaminated, None, RULES).reasons[0]


def test_one_variable_hygiene_warning():
    a = result("a", 6.0, 0.5, 0.6, settings={"sft.epochs": 2, "sft.learning_rate": 1e-3, "name": "x"})
    one = result("b", 6.0, 0.5, 0.6, settings={"sft.epochs": 3, "sft.learning_rate": 1e-3, "name": "y"})
    two = result("c", 6.0, 0.5, 0.6, settings={"sft.epochs": 3, "sft.learning_rate": 5e-4})
    assert decide(one, a, RULES).warnings == []
    assert "2 settings changed" in decide(two, a, RULES).warnings[0]
    # A setting the champion's older config lacks counts at its default: at the default it is no change.
    upgraded = result("d", 6.0, 0.5, 0.6, settings={"sft.epochs": 3, "sft.learning_rate": 1e-3,
                                                    "judge.prefix_cache_mb": 2048, "decide.require_approval": False})
    assert decide(upgraded, a, RULES).warnings == []
    set_off = result("e", 6.0, 0.5, 0.6, settings={"sft.epochs": 3, "sft.learning_rate": 1e-3,
                                                   "judge.prefix_cache_mb": 0})
    assert "2 settings changed against the champion (judge.prefix_cache_mb, sft.epochs)" in decide(set_off, a,
                                                                                                  RULES).warnings[0]


def test_advice_follows_the_decision_tree():
    healthy_same = decide(scored("b", [6.0] * 8), scored("a", [6.0] * 8), RULES)
    assert "data-quality issue" in healthy_same.advice[0]
    rising = result("b", 6.0, 0.2, 0.3, train_losses=(0.5, 0.3, 0.2), val_losses=(0.4, 0.25, 0.3))
    assert "train 2 epoch(s)" in decide(rising, None, RULES).advice[0]


def test_val_rising_while_train_falls_is_named_even_when_the_best_epoch_rescued_the_run():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0)
    # The best-val epoch (2) has a healthy ratio, so no gate trips; the reading must still be in the reasons.
    run = result("new", 6.0, 0.30, 0.40, train_losses=(0.5, 0.3, 0.1, 0.05),
                    val_losses=(0.55, 0.40, 0.48, 0.62))
    decision = decide(run, result("old", 6.0, 0.3, 0.4), rules)  # block_val_rise off: a diagnosis
    assert decision.action == "hold"
    assert decision.reasons[0].startswith("overfitting: val loss rose after epoch 2 (0.4000 -> 0.6200)")
    gated = decide(run, result("old", 6.0, 0.3, 0.4),
                   decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0,
                                min_overfit_gap=0.05, block_val_rise=True))
    assert gated.action == "rollback" and "the schedule overshot" in gated.reasons[0]
    assert "next time train 2 epoch(s)" in gated.advice[0]
    healthy = result("new", 6.0, 0.30, 0.40, train_losses=(0.5, 0.3), val_losses=(0.55, 0.40))
    assert not any("overfitting" in r for r in decide(healthy, None, rules).reasons)


def test_overfitting_rules_ignore_ratios_and_rises_of_near_zero_losses():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0, min_overfit_gap=0.01,
                         min_val_rise=0.1, block_val_rise=True)
    # Measured on the clean sample data (6 epochs, lr 0.004): both losses near zero, ratio 2.7, val still falling.
    tiny = result("new", 8.0, 0.0002, 0.00056, train_losses=(0.17, 0.017, 0.0011, 0.0002),
                     val_losses=(0.16, 0.015, 0.00087, 0.00056))
    assert decide(tiny, None, rules).action == "promote"
    bumped = result("new", 8.0, 0.0002, 0.0009, train_losses=(0.17, 0.0011, 0.0002),
                       val_losses=(0.16, 0.0006, 0.0009))  # val rose 50% but by 0.0003 nats: noise
    assert decide(bumped, None, rules).action == "promote"
    wobble = result("new", 8.0, 0.05, 0.083, train_losses=(0.1, 0.06, 0.05),
                       val_losses=(0.09, 0.08, 0.083))  # +0.003 nats, +4%: not a rise
    assert decide(wobble, None, rules).action == "promote"
    # Measured on the noisy-label sample data, full fine-tuning at lr 2e-4: val bottomed at epoch 3.
    memorising = result("new", 8.0, 0.054, 0.079, train_losses=(0.117, 0.079, 0.054, 0.048, 0.031, 0.023),
                           val_losses=(0.154, 0.098, 0.079, 0.088, 0.084, 0.101))
    decision = decide(memorising, None, rules)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("overfitting: val loss rose after epoch 3 (0.0790 -> 0.1010)")
    real = result("new", 8.0, 0.10, 0.30, train_losses=(0.5, 0.1), val_losses=(0.3, 0.3))
    assert decide(real, None, rules).reasons[0].startswith("overfitting: val/train loss ratio 3.00")


def test_a_9_item_test_split_cannot_promote_or_roll_back():
    from sftjudge.config import RunConfig
    from sftjudge.decide.records import DecideRules

    rules = DecideRules.from_config(RunConfig())  # the shipped rules: 20 paired items needed

    def run(run_id, scores):
        return result(run_id, sum(scores) / len(scores), item_scores={str(i): s for i, s in enumerate(scores)})

    small_good, small_bad, small_champion = run("new", [9.0] * 9), run("new", [2.0] * 9), run("old", [5.0] * 9)
    for challenger, champion in ((small_good, None), (small_good, small_champion), (small_bad, small_champion)):
        decision = decide(challenger, champion, rules)
        assert decision.action == "hold", decision.reasons
        assert decision.reasons[0].startswith("too few items to decide: 9 test items")
        assert "at least 20 needed" in decision.reasons[0]
    big_champion = run("old", [5.0, 6.0] * 10)
    assert decide(run("new", [9.0, 8.5] * 10), big_champion, rules).action == "promote"
    worse = decide(run("new", [2.0, 2.5] * 10), big_champion, rules)  # every item 3 or 3.5 points worse
    assert worse.action == "rollback" and worse.comparison["paired_items"] == 20
    spread = statistics.stdev([-3.0, -3.5] * 10)
    assert worse.comparison["detectable_difference"] == pytest.approx(2.8 * spread / 20 ** 0.5, abs=1e-4)


def _scored(run_id, judge, rouge, f1):
    """A run whose 12 test items have these judge scores and reference metrics (with a little spread)."""
    ids = [str(i) for i in range(12)]
    wobble = [0.01 * (i % 3) for i in range(12)]
    return result(run_id, judge, item_scores={i: judge + w for i, w in zip(ids, wobble)},
                  item_metrics={i: {"rouge_l": rouge + w, "token_f1": f1 + w} for i, w in zip(ids, wobble)})


def test_a_judge_preferring_what_the_references_call_worse_is_contested_and_decides_nothing():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0)
    # The judge likes the new run's answers (8 vs 6) while ROUGE-L and token F1 against the references fall.
    fooled = decide(_scored("new", 8.0, rouge=0.20, f1=0.15), _scored("old", 6.0, rouge=0.60, f1=0.50), rules)
    assert fooled.action == "hold"
    assert fooled.reasons[0].startswith("judge signal contested against champion old: the judge says this run is "
                                        "better (judge +2.00")
    assert "ROUGE-L -0.40" in fooled.reasons[0] and "token F1 -0.35" in fooled.reasons[0]
    assert "the judge alone would have said promote" in fooled.reasons[1]
    # The same judge verdict with the references agreeing: promoted.
    agreed = decide(_scored("new", 8.0, rouge=0.60, f1=0.50), _scored("old", 6.0, rouge=0.20, f1=0.15), rules)
    assert agreed.action == "promote"
    assert [r["direction"] for r in agreed.comparison["consistency"]["champion old"]] == [1, 1, 1]


def test_a_first_run_the_references_call_worse_than_the_base_model_is_not_made_champion():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0)
    run = _scored("new", 8.0, rouge=0.20, f1=0.15)
    base = _scored("base", 5.0, rouge=0.50, f1=0.45)
    contested_run = replace(run, baseline_items=base.items())
    decision = decide(contested_run, None, rules)
    assert decision.action == "hold" and decision.champion_before is None
    assert decision.reasons[0].startswith("judge signal contested against the base model")
    assert decide(run, None, rules).action == "promote"  # no baseline answers: nothing to contest
