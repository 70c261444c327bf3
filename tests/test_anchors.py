"""The reference-anchored scale: the reference and an empty answer judged once per item and judge, reused by
every later run, and a score reported as the share of the way from the empty answer to the reference."""

from __future__ import annotations

from pathlib import Path

from sftjudge.judge.anchors import anchor_scores, anchor_summary, normalised
from sftjudge.judge.spec import Judgment, load_judge

REPO = Path(__file__).resolve().parent.parent


class FakeJudge:
    """Gives the reference 9, an empty answer 3, anything else 6; counts what it was asked."""

    def __init__(self, name="fake"):
        self.name, self.asked = name, []

    def identity(self, spec):
        return f"{spec.name}@{self.name}"

    def scorer(self, spec):
        return self

    def score(self, items, batch_size=4):
        self.asked += items
        return [Judgment(i["id"], score=9.0 if i["answer"] == i["reference"] else 3.0 if not i["answer"] else 6.0)
                for i in items]


GENERATIONS = [{"id": str(i), "instruction": f"q{i}", "reference": f"ref {i}", "text": f"answer {i}"}
               for i in range(5)]


def test_anchors_are_judged_once_per_item_and_judge_then_reused(tmp_path):
    spec = load_judge(REPO / "judges", "reference-score")
    judge = FakeJudge()
    anchors = anchor_scores(judge, spec, GENERATIONS, tmp_path, batch_size=2)
    assert anchors == {str(i): {"reference": 9.0, "empty": 3.0} for i in range(5)}
    assert len(judge.asked) == 10
    again = FakeJudge()
    assert anchor_scores(again, spec, GENERATIONS, tmp_path, batch_size=2) == anchors and again.asked == []
    other = FakeJudge("another-model")  # another judge identity: its own anchors
    anchor_scores(other, spec, GENERATIONS, tmp_path, batch_size=2)
    assert len(other.asked) == 10
    assert anchor_summary(anchors) == {"items": 5, "reference_mean": 9.0, "empty_mean": 3.0}


def test_scores_on_the_anchored_scale():
    anchors = {str(i): {"reference": 9.0, "empty": 3.0} for i in range(4)}
    assert normalised({str(i): 6.0 for i in range(4)}, anchors) == 0.5
    assert normalised({"0": 9.0, "1": 9.0, "2": None}, anchors) == 1.0  # unscored items do not count
    assert normalised({"x": 9.0}, anchors) is None  # no shared items


def test_the_report_sets_base_model_champion_and_run_side_by_side(tmp_path):
    import json

    from sftjudge.decide.report import judge_report_markdown
    from sftjudge.judge.stage import side_by_side

    cheap = {"similarity": 0.9, "token_f1": 0.8, "rouge_l": 0.7, "exact_match": 0.5, "bleu": 0.1}
    metrics = {"judge": "reference-score@q#1", "items": 30, "judge_score_mean": 8.4, "cheap": cheap,
               "normalised": {"run": 0.81, "base": -0.2, "champion": 0.6},
               "baseline": {"model": "base", "judge_score_mean": 5.4, "cheap": cheap | {"similarity": 0.5}}}
    champion = tmp_path / "champion"
    champion.mkdir()
    (champion / "metrics.json").write_text(json.dumps({"judge": "reference-score@q#1", "items": 30,
                                                       "judge_score_mean": 7.9, "cheap": cheap | {"similarity": 0.7}}))
    sides = side_by_side(metrics, str(champion))
    assert list(sides) == ["base", "champion", "run"]
    assert [sides[k]["similarity"] for k in sides] == [0.5, 0.7, 0.9]
    assert [sides[k]["judge"] for k in sides] == [5.4, 7.9, 8.4]
    assert [sides[k]["normalised"] for k in sides] == [-0.2, 0.6, 0.81]

    report = judge_report_markdown({**metrics, "side_by_side": sides, "unparseable": 0, "judge_score_stdev": 1.0,
                                    "anchors": {"items": 30, "empty_mean": 3.0, "reference_mean": 9.4},
                                    "health": {"valid": True, "problems": [], "warnings": []}})
    assert "| semantic similarity | 0.5 | 0.7 | 0.9 |" in report
    assert "| % of reference quality | -20% | 60% | 81% |" in report

    # Another judge scored the champion: its judge score is not comparable, its cheap metrics still are.
    (champion / "metrics.json").write_text(json.dumps({"judge": "other@x#2", "items": 30, "judge_score_mean": 9.9,
                                                       "cheap": cheap}))
    assert side_by_side(metrics, str(champion))["champion"]["judge"] is None
    assert side_by_side(metrics, str(champion))["champion"]["similarity"] == 0.9
    # A champion judged on another number of items is left out rather than compared.
    (champion / "metrics.json").write_text(json.dumps({"judge": "reference-score@q#1", "items": 12, "cheap": cheap}))
    assert "champion" not in side_by_side(metrics, str(champion))


def test_a_judge_whose_anchors_sit_close_is_degraded_and_does_not_decide():
    from helpers import decide_rules

    from sftjudge.config import JudgeHealthConfig
    from sftjudge.decide.records import RunResult
    from sftjudge.decide.rules import decide
    from sftjudge.judge.anchors import anchor_degradation
    from sftjudge.judge.health import judge_health

    judged = [{"score": s, "unparseable": None, "label_mass": 0.9} for s in (7.6, 8.1, 8.9, 9.0)]
    compressed = {"items": 40, "reference_mean": 9.17, "empty_mean": 7.5}  # the public set, before this issue
    health = judge_health(judged, None, JudgeHealthConfig())
    assert health.valid and health.status == "valid"
    health.degrade(anchor_degradation(compressed, JudgeHealthConfig().min_anchor_span))
    assert not health.valid and health.status == "degraded"  # before: valid, with a warning
    assert "compressed into 1.7 points" in health.problems[0]
    spread = {"items": 40, "reference_mean": 9.45, "empty_mean": 7.07}  # the demo's embedded judge: 2.4 points
    assert anchor_degradation(spread, 2.0) == []
    run = RunResult(run_id="b", judge_score=8.6, train_loss=0.5, val_loss=0.6, test_fingerprint="t", judge_key="j",
                    item_scores={"0": 8.6}, judge_problems=tuple(health.problems), judge_status=health.status)
    decision = decide(run, None, decide_rules())
    assert decision.action != "promote" and decision.reasons[0].startswith("judge signal degraded: the judge gives")
