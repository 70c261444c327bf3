"""The regression suite: shipped data, validation, per-category alignment tax, the decide gate."""

import json
from pathlib import Path

import pytest
from helpers import decide_rules

from sftjudge.decide.records import RunResult
from sftjudge.decide.rules import decide, regression_gate
from sftjudge.errors import DataError
from sftjudge.judge.cache import CachedJudge, JudgmentCache
from sftjudge.judge.spec import Judgment, load_judge
from sftjudge.judge.suite import judge_suite, load_suite
from sftjudge.run import files


def test_shipped_suite_has_every_category_with_criteria():
    rows = load_suite("general")
    categories = {}
    for row in rows:
        categories.setdefault(row.meta["category"], []).append(row)
        assert row.meta["criteria"].strip() and row.completion.strip() and row.instruction.strip()
    assert set(categories) == {"arithmetic", "knowledge", "instructions", "reasoning", "writing", "safety"}
    assert all(len(items) == 4 for items in categories.values())
    assert len({row.id for row in rows}) == len(rows)


def test_suite_row_without_criteria_names_file_line_and_field(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps({"id": "a", "instruction": "Hi", "output": "Hello", "category": "x",
                                "criteria": "greets"}) + "\n"
                    + json.dumps({"id": "b", "instruction": "2+2?", "output": "4", "category": "math"}) + "\n")
    with pytest.raises(DataError, match=r"suite\.jsonl:2.*'criteria'"):
        load_suite(str(path))


def test_unknown_suite_lists_the_shipped_ones():
    with pytest.raises(DataError, match="general"):
        load_suite("no-such-suite")


class KeywordScorer:
    """Scores 9 when the answer contains the word 'good', else 2: a judge whose verdicts the test controls."""

    def score(self, items, batch_size=4):
        assert all(item["criteria"] for item in items)  # the criteria reach the judge prompt
        return [Judgment(item["id"], score=9.0 if "good" in item["answer"] else 2.0) for item in items]


class FakeLoaded:
    def scorer(self, spec):
        assert spec.name == "criteria" and "criteria" in spec.inputs
        return KeywordScorer()

    def identity(self, spec):
        return f"{spec.name}@fake"


def _judging(cache):
    return CachedJudge(loaded=FakeLoaded(), cache=cache, batch_size=4), load_judge(Path("judges"), "criteria")


def _write(path, rows, answer):
    path.write_text("".join(json.dumps({"id": r.id, "instruction": r.instruction, "reference": r.completion,
                                        "text": answer(r)}) + "\n" for r in rows))


def test_judge_suite_measures_the_tax_per_category(tmp_path):
    rows = load_suite("general")
    # The fine-tuned model lost only its safety answers; the base model answered everything well.
    _write(tmp_path / files.REGRESSION_GENERATIONS, rows,
           lambda r: "bad" if r.meta["category"] == "safety" else "good")
    _write(tmp_path / files.REGRESSION_BASELINE, rows, lambda r: "good")
    cache = JudgmentCache(tmp_path / files.JUDGMENT_CACHE).load()
    result = judge_suite(tmp_path, *_judging(cache), "general")
    assert result["categories"]["safety"] == {"items": 4, "run": 2.0, "base": 9.0, "tax": 7.0,
                                              "item_taxes": [7.0, 7.0, 7.0, 7.0]}
    assert result["categories"]["arithmetic"]["tax"] == 0.0
    assert result["run_mean"] == pytest.approx((5 * 9.0 + 2.0) / 6, abs=1e-4)
    written = [json.loads(line) for line in (tmp_path / files.REGRESSION_JUDGMENTS).read_text().splitlines()]
    assert len(written) == 2 * len(rows) and {w["model"] for w in written} == {"run", "base"}
    assert regression_gate(result, 2.0, None) == ([
        "alignment tax: 'safety' fell from 9.00 (base model) to 2.00, -7.00 points over 4 items (95% CI 7.00 to "
        "7.00; limit 2.00)"], [])
    assert result["categories"]["safety"]["item_taxes"] == [7.0] * 4 and len(result["run_scores"]) == len(rows)


def test_judge_suite_is_skipped_without_suite_answers(tmp_path):
    cache = JudgmentCache(tmp_path / "c.jsonl").load()
    assert judge_suite(tmp_path, *_judging(cache), "general") is None


def _with_tax(tax: float) -> RunResult:
    regression = {"categories": {"writing": {"items": 4, "run": 7.0 - tax, "base": 7.0, "tax": tax}},
                  "run_mean": 7.0 - tax}
    return RunResult(run_id="new", judge_score=8.0, train_loss=0.5, val_loss=0.6,
                     test_fingerprint="t", judge_key="j", regression=regression, item_scores={"0": 8.0})


@pytest.mark.parametrize("tax, action", [(0.5, "promote"), (3.0, "rollback")])
def test_alignment_tax_above_the_limit_blocks_promotion(tax, action):
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0, max_alignment_tax=2.0)
    champion = RunResult(run_id="old", judge_score=6.0, train_loss=0.5, val_loss=0.6, test_fingerprint="t",
                         judge_key="j", item_scores={"0": 6.0})
    decision = decide(_with_tax(tax), champion, rules)
    assert decision.action == action
    assert any("alignment tax: 'writing'" in r for r in decision.reasons) == (action == "rollback")


def test_alignment_tax_is_only_reported_when_the_gate_is_off():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0, max_alignment_tax=None)
    assert decide(_with_tax(5.0), None, rules).action == "promote"


def test_regression_floor_gate():
    rules = decide_rules(min_improvement=0.25, max_val_train_ratio=2.0, min_judge_score=1.0, min_regression_score=6.0)
    decision = decide(_with_tax(1.5), None, rules)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("regression suite mean 5.50 is below the floor of 6.00")


def _with_item_taxes(item_taxes: list[float]) -> RunResult:
    tax = sum(item_taxes) / len(item_taxes)
    regression = {"categories": {"writing": {"items": len(item_taxes), "run": 7.0 - tax, "base": 7.0, "tax": tax,
                                             "item_taxes": item_taxes}}, "run_mean": 7.0 - tax}
    return RunResult(run_id="new", judge_score=8.0, train_loss=0.5, val_loss=0.6, test_fingerprint="t",
                     judge_key="j", regression=regression, item_scores={"0": 8.0})


def test_alignment_tax_inside_its_interval_does_not_block_but_is_reported():
    rules = decide_rules(max_alignment_tax=2.0)
    # One item lost 9 points, one 6.6, the others nothing: a mean of 3.65 over 4 items, its interval reaching 0.
    noisy = decide(_with_item_taxes([9.0, 6.6, 0.0, -1.0]), None, rules)
    assert noisy.action == "promote"
    assert any(w.startswith("alignment tax: 'writing' lost 3.65 points over 4 items") for w in noisy.warnings)
    # Every item lost about 4 points: the whole interval is above the limit.
    steady = decide(_with_item_taxes([4.0, 3.5, 4.2, 3.8]), None, rules)
    assert steady.action == "rollback"
    assert steady.reasons[0].startswith("alignment tax: 'writing' fell from 7.00 (base model) to 3.12")
