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
