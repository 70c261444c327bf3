from sftjudge.decide import DecideRules, RunResult, decide
from sftjudge.metrics import FormatRule, aggregate, item_metrics

RULES = DecideRules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=3.0)


def result(run_id, score, train=0.5, val=0.6, test="t", judge="j"):
    return RunResult(run_id, score, train, val, test, judge)


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


def test_first_run_promoted():
    decision = decide(result("a", 6.0), None, RULES)
    assert decision.action == "promote" and decision.champion_before is None


def test_better_run_promoted_worse_rolled_back():
    champ = result("a", 6.0)
    assert decide(result("b", 6.5), champ, RULES).action == "promote"
    worse = decide(result("c", 5.0), champ, RULES)
    assert worse.action == "rollback" and "below the required improvement" in worse.reasons[0]


def test_overfitting_rolls_back_even_with_better_score():
    decision = decide(result("b", 9.0, train=0.1, val=0.5), result("a", 6.0), RULES)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("overfitting: val/train loss ratio 5.00")


def test_gates_and_comparability():
    assert decide(result("b", 2.0), None, RULES).action == "rollback"
    assert decide(result("b", None), None, RULES).action == "rollback"
    other_split = decide(result("b", 9.0, test="other"), result("a", 6.0), RULES)
    assert other_split.action == "rollback" and "test split differs" in other_split.reasons[0]
    other_judge = decide(result("b", 9.0, judge="k"), result("a", 6.0), RULES)
    assert "not comparable: judged by k" in other_judge.reasons[0]
