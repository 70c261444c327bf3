"""Per-dimension scores: one pass over the shared prompt, each dimension read from its own short suffix on the
cached keys and values - the same numbers as scoring every dimension with its own full prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjudge.errors import JudgeError
from sftjudge.judge.logprob import LogprobJudge
from sftjudge.judge.rubric import RubricJudge
from sftjudge.judge.spec import load_judge

REPO = Path(__file__).resolve().parent.parent
ITEMS = [{"id": str(i), "instruction": f"Question {i}: " + "why " * i, "reference": f"because {i}",
          "answer": "no idea " * (2 * i)} for i in range(5)]


@pytest.mark.model
def test_reusing_the_shared_prompt_gives_the_scores_of_separate_prompts(tiny_model):
    model, tok = tiny_model
    spec = load_judge(REPO / "judges", "rubric")
    together = RubricJudge(model, tok, spec).score(ITEMS, batch_size=3)
    for name, opening in spec.criteria.items():
        alone = LogprobJudge(model, tok, spec.model_copy(update={"kind": "score", "answer_prefix": f"{opening}: "}))
        for judged, single in zip(together, alone.score(ITEMS, batch_size=1)):
            assert judged.dimensions[name] == pytest.approx(single.score, abs=1e-4), name
    for judged in together:
        assert set(judged.dimensions) == set(spec.criteria)
        assert judged.score == pytest.approx(sum(judged.dimensions.values()) / 4)
        assert judged.to_json()["dimensions"] == pytest.approx(judged.dimensions, abs=1e-4)


@pytest.mark.model
def test_rubric_scores_do_not_depend_on_the_batch(tiny_model):
    model, tok = tiny_model
    judge = RubricJudge(model, tok, load_judge(REPO / "judges", "rubric"))
    for a, b in zip(judge.score(ITEMS, batch_size=5), [judge.score([it], batch_size=1)[0] for it in ITEMS]):
        assert a.dimensions == pytest.approx(b.dimensions, abs=1e-3)


def test_a_rubric_judge_needs_its_criteria(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "p.txt").write_text("{instruction} {reference} {answer}")
    (folder / "judge.yaml").write_text("name: r\nkind: rubric\nprompt_file: p.txt\n")
    with pytest.raises(JudgeError, match="needs 'criteria'"):
        load_judge(tmp_path, "r")


def test_the_weakest_dimension_drives_the_advice():
    from helpers import decide_rules

    from sftjudge.decide.records import RunResult
    from sftjudge.decide.rules import decide

    run = RunResult(run_id="r", judge_score=8.0, train_loss=0.5, val_loss=0.6, test_fingerprint="t", judge_key="j",
                    item_scores={"0": 8.0}, dimensions={"accuracy": 8.6, "completeness": 8.1, "format": 8.9,
                                                         "clarity": 4.2})
    advice = decide(run, None, decide_rules()).advice
    assert advice[-1].startswith("weakest dimension: clarity (4.2/10")
    assert "DPO preference pairs" in advice[-1]
