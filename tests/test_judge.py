import math
from pathlib import Path

import pytest

from sftjudge.errors import JudgeError
from sftjudge.judge.logprob import (
    LabelTokens,
    LogprobJudge,
    label_distribution,
    label_tokens,
)
from sftjudge.judge.spec import load_judge

REPO = Path(__file__).resolve().parent.parent


def test_shipped_judge_loads_with_prompts():
    spec = load_judge(REPO / "judges", "reference-score")
    assert spec.mode == "logprob" and spec.scale.max == 10
    messages = spec.render_messages({"instruction": "Q?", "reference": '{"a": 1}', "answer": '{"a": 2}'})
    assert messages[0]["role"] == "system"
    assert '{"a": 1}' in messages[-1]["content"] and '{"a": 2}' in messages[-1]["content"]


def test_missing_judge_lists_known_ones():
    with pytest.raises(JudgeError, match="reference-score"):
        load_judge(REPO / "judges", "nope")


def test_judge_prompt_must_have_placeholders(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "judge.yaml").write_text("name: j\nprompt_file: p.txt\n")
    (folder / "p.txt").write_text("no placeholders here")
    with pytest.raises(JudgeError, match=r"must contain \{instruction\}"):
        load_judge(tmp_path, "j")


def test_unknown_judge_setting_is_named(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "judge.yaml").write_text("name: j\nprompt_file: p.txt\ntemprature: 0\n")
    with pytest.raises(JudgeError, match="temprature"):
        load_judge(tmp_path, "j")


def test_ten_splits_into_one_zero_and_is_read_in_the_same_pass():
    labels = LabelTokens(single={str(s): s for s in range(1, 10)}, double={"10": (1, 0)})
    first = [0.0] * 12
    first[1], first[9] = 0.6, 0.4          # "1" (which may continue to "10") and "9"
    second = [0.0] * 12
    second[0] = 0.5                        # after "1": "0" half the time
    dist = label_distribution(first, second, labels)
    assert dist["10"] == pytest.approx(0.3) and dist["1"] == pytest.approx(0.3) and dist["9"] == pytest.approx(0.4)


@pytest.mark.model
def test_label_tokens_for_tiny_tokenizer(tiny_model):
    _, tok = tiny_model
    labels = label_tokens(tok, [str(v) for v in range(1, 11)])
    assert set(labels.single) == {str(v) for v in range(1, 10)} and set(labels.double) == {"10"}
    assert labels.shared_first == labels.single["1"]


@pytest.mark.model
def test_logprob_scores_are_finite_in_range_and_batch_independent(tiny_model):
    model, tok = tiny_model
    spec = load_judge(REPO / "judges", "reference-score")
    judge = LogprobJudge(model, tok, spec)
    items = [{"id": str(i), "instruction": "Q" * (i + 1), "reference": "yes", "answer": "no " * i}
             for i in range(5)]
    together = judge.score(items, batch_size=5)
    alone = [judge.score([it], batch_size=1)[0] for it in items]
    for a, b in zip(together, alone):
        assert 1.0 <= a.score <= 10.0 and math.isfinite(a.score)
        assert 0.0 < a.label_mass <= 1.0
        assert sum(a.distribution.values()) == pytest.approx(1.0)
        assert a.score == pytest.approx(b.score, abs=1e-3)  # left padding + positions do not shift scores


@pytest.mark.model
def test_reading_only_the_last_logits_gives_the_same_scores(tiny_model, monkeypatch):
    from sftjudge.judge import prefix

    model, tok = tiny_model
    judge = LogprobJudge(model, tok, load_judge(REPO / "judges", "reference-score"))
    # the tiny model's forward takes logits_to_keep, so the fast path is under test
    assert prefix.keep_logits(model, 2) == {"logits_to_keep": 2}
    items = [{"id": str(i), "instruction": "Q" * (i + 2), "reference": "yes", "answer": "no " * i} for i in range(4)]
    fast = judge.score(items, batch_size=4)
    monkeypatch.setattr(prefix, "keep_logits", lambda model, positions: {})
    full = judge.score(items, batch_size=4)
    for a, b in zip(fast, full):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.distribution == pytest.approx(b.distribution, abs=1e-6)


@pytest.mark.model
def test_long_prompts_are_truncated_and_flagged(tiny_model):
    model, tok = tiny_model
    judge = LogprobJudge(model, tok, load_judge(REPO / "judges", "reference-score"), max_prompt_tokens=64)
    [j] = judge.score([{"id": "x", "instruction": "word " * 200, "reference": "a", "answer": "b"}])
    assert j.truncated and j.prompt_tokens == 64


@pytest.mark.model
def test_pairwise_judge_reads_a_choice(tiny_model):
    model, tok = tiny_model
    spec = load_judge(REPO / "judges", "pairwise")
    judge = LogprobJudge(model, tok, spec)
    [j] = judge.score([{"id": "p", "instruction": "Q", "reference": "r", "answer_a": "x", "answer_b": "y"}])
    assert j.choice in {"A", "B", "C"} and j.score is None
    assert sum(j.distribution.values()) == pytest.approx(1.0)
