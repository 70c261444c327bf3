"""Shared-prefix reuse in the judge: the question-and-reference opening of a judge prompt is computed once per item
and reused for every answer judged against it, with the same scores as computing every prompt whole."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from sftjudge.judge.logprob import LogprobJudge
from sftjudge.judge.prefix import CANDIDATE_FIELDS, PrefixStore, cut_points, prefix_length
from sftjudge.judge.rubric import RubricJudge
from sftjudge.judge.spec import load_judge

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [("Which port does the billing router listen on?", "Port 8443."),
             ("Extract the ticket as JSON: my invoice is wrong", '{"intent": "billing", "urgent": false}'),
             ("Name the capital of France.", "Paris")]
ANSWERS = ["Port 8443.", "", "\n\nwell", " leading space", "I like trains " * 30, '{"intent": "billing"}']


def items() -> list[dict[str, str]]:
    return [{"id": f"q{q}-a{a}", "instruction": question, "reference": reference, "answer": answer}
            for q, (question, reference) in enumerate(QUESTIONS) for a, answer in enumerate(ANSWERS)]


def judge(name: str):
    return load_judge(REPO / "judges", name)


@pytest.mark.model
def test_scores_with_reused_prefixes_equal_scores_of_whole_prompts(tiny_model):
    model, tok = tiny_model
    whole = LogprobJudge(model, tok, judge("reference-score"), max_prompt_tokens=300)
    store = PrefixStore(64 * 2**20)
    reused = LogprobJudge(model, tok, judge("reference-score"), max_prompt_tokens=300, prefixes=store)
    expected = whole.score(items(), batch_size=4)
    # Two calls, as the stage makes them (the run's answers, then the anchors): the second reuses the first's.
    first = reused.score(items()[::2], batch_size=4)
    second = reused.score(items()[1::2], batch_size=3)
    got = {j.id: j for j in first + second}
    assert any(j.truncated for j in expected)  # the long answer was cut to fit: reuse must survive that too
    for want in expected:
        assert got[want.id].score == pytest.approx(want.score, abs=1e-4), want.id
        assert got[want.id].label_mass == pytest.approx(want.label_mass, abs=1e-4), want.id
    assert store.misses == len(QUESTIONS)  # each question's opening computed once
    assert store.hits == len(items()) - len(QUESTIONS)


@pytest.mark.model
def test_both_pairwise_orders_share_the_opening_and_match(tiny_model):
    model, tok = tiny_model
    pairs = [{"id": f"p{i}", "instruction": q, "reference": r, "answer_a": a, "answer_b": b}
             for i, ((q, r), (a, b)) in enumerate(zip(QUESTIONS, [("x", "y"), ("", "long " * 20), ("Paris", "Rome")]))]
    swapped = [p | {"id": p["id"] + "-swapped", "answer_a": p["answer_b"], "answer_b": p["answer_a"]} for p in pairs]
    store = PrefixStore(64 * 2**20)
    whole = LogprobJudge(model, tok, judge("pairwise")).score(pairs + swapped)
    reused = LogprobJudge(model, tok, judge("pairwise"), prefixes=store)
    got = reused.score(pairs) + reused.score(swapped)
    for a, b in zip(whole, got):
        for label in a.distribution:
            assert b.distribution[label] == pytest.approx(a.distribution[label], abs=1e-4)
    assert store.hits == len(swapped)


@pytest.mark.model
def test_rubric_dimensions_with_reused_prefixes_match(tiny_model):
    model, tok = tiny_model
    store = PrefixStore(64 * 2**20)
    whole = RubricJudge(model, tok, judge("rubric")).score(items(), batch_size=4)
    reused = RubricJudge(model, tok, judge("rubric"), prefixes=store).score(items(), batch_size=4)
    for a, b in zip(whole, reused):
        for name, score in a.dimensions.items():
            assert b.dimensions[name] == pytest.approx(score, abs=1e-4), (a.id, name)
    assert store.hits > 0


@pytest.mark.model
def test_a_rubric_after_the_pointwise_judgment_reuses_the_answer_and_matches(tiny_model):
    """The stage judges each answer pointwise, then by rubric: both prompts read alike through the answer, so the
    rubric computes only its own instruction and the dimensions (counted in tokens fed to the model)."""
    model, tok = tiny_model
    whole = RubricJudge(model, tok, judge("rubric"), max_prompt_tokens=560).score(items(), batch_size=4)
    store = PrefixStore(64 * 2**20)
    LogprobJudge(model, tok, judge("reference-score"), max_prompt_tokens=560, prefixes=store).score(items())
    fed = []
    original = model.forward

    @functools.wraps(original)  # keeps the signature the judge inspects for its cache argument's name
    def counting(*args, **kwargs):
        fed.append(int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1]:].sum()))
        return original(*args, **kwargs)

    rubric = RubricJudge(model, tok, judge("rubric"), max_prompt_tokens=560, prefixes=store)
    encoded = [rubric.prompt.encode_fitted(it) for it in items()]
    # At 560 tokens the long answer fits the pointwise prompt but is cut to fit the rubric's (longer) one: the two
    # answers then differ and that item reuses only the opening.
    tails = [len(ids) - next(c for c in reversed(cuts) if tuple(ids[:c]) in store.entries)
             for ids, _, cuts in encoded]
    assert sum(len(cuts) == 2 and tuple(ids[:cuts[1]]) in store.entries for ids, _, cuts in encoded) == 12
    model.forward = counting
    try:
        reused = rubric.score(items(), batch_size=4)
    finally:
        model.forward = original
    for a, b in zip(whole, reused):
        for name, score in a.dimensions.items():
            assert b.dimensions[name] == pytest.approx(score, abs=1e-4), (a.id, name)
    answers = sum(len(tok(it["answer"], add_special_tokens=False)["input_ids"]) for it in items())
    suffixes = sum(len(s) for s in rubric.suffixes.values()) * len(items())
    prompts = sum(len(ids) for ids, _, _ in encoded)
    assert sum(fed) < prompts - answers + suffixes, "the answers were computed again"
    assert sum(fed) == sum(tails) + suffixes  # exactly the text after each stored prefix, then the dimensions


@pytest.mark.model
def test_cut_points_end_after_the_opening_and_after_the_answer(tiny_model):
    _, tok = tiny_model
    scorer = LogprobJudge(tiny_model[0], tok, judge("reference-score"), prefixes=PrefixStore(2**20))
    rubric = LogprobJudge(tiny_model[0], tok, judge("rubric"), prefixes=PrefixStore(2**20))
    for item in items():
        ids, rubric_ids = scorer.prompt_ids(item), rubric.prompt_ids(item)
        cuts = cut_points(tok, scorer.prompt_text, item, ids)
        assert cuts[0] == prefix_length(tok, scorer.prompt_text, item, ids, CANDIDATE_FIELDS)
        if item["answer"].strip():
            assert len(cuts) == 2 and item["answer"].strip()[:10] in tok.decode(ids[cuts[0]:cuts[1]])
        # the rubric's prompt has the very same tokens up to the answer's end, and a cut there too
        assert rubric_ids[:cuts[-1]] == ids[:cuts[-1]]
        assert cut_points(tok, rubric.prompt_text, item, rubric_ids)[-1] == cuts[-1]
    pair = {"id": "p", "instruction": "q", "reference": "r", "answer_a": "x", "answer_b": "y"}
    pairwise = LogprobJudge(tiny_model[0], tok, judge("pairwise"), prefixes=PrefixStore(2**20))
    assert len(cut_points(tok, pairwise.prompt_text, pair, pairwise.prompt_ids(pair))) == 1  # opening only


@pytest.mark.model
def test_the_prefix_is_the_same_tokens_whatever_the_answer(tiny_model):
    _, tok = tiny_model
    scorer = LogprobJudge(tiny_model[0], tok, judge("reference-score"), prefixes=PrefixStore(2**20))
    for question, reference in QUESTIONS:
        keys = set()
        for answer in ANSWERS:
            item = {"id": "x", "instruction": question, "reference": reference, "answer": answer}
            ids = scorer.prompt_ids(item)
            p = prefix_length(tok, scorer.prompt_text, item, ids, CANDIDATE_FIELDS)
            assert 0 < p < len(ids)
            keys.add(tuple(ids[:p]))
            assert reference in tok.decode(ids[:p])  # the opening holds the reference; the answer comes after it
        assert len(keys) == 1, "one key per question: every answer reuses the same opening"


def test_the_store_keeps_to_its_budget_and_drops_the_least_recently_used():
    import torch

    def entry(n: int):
        return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]  # 2 * n * 4 floats = 32n bytes

    store = PrefixStore(budget_bytes=32 * 10)
    store.put((1,), entry(4))
    store.put((2,), entry(4))
    assert store.get((1,)) is not None  # (1,) is now the most recently used
    store.put((3,), entry(4))  # over budget: (2,) goes
    assert store.get((2,)) is None and store.get((1,)) is not None and store.get((3,)) is not None
    assert store.used <= store.budget
    store.put((4,), entry(11))  # larger than the whole budget: not kept, nothing else dropped
    assert store.get((4,)) is None and len(store.entries) == 2


@pytest.mark.model
def test_an_opening_only_one_row_needs_costs_no_pass_of_its_own(tiny_model):
    """A first judgment of an item runs its whole prompt in one pass and keeps the opening from it; only an opening
    several rows of the batch share is computed apart, once."""
    model, tok = tiny_model
    store = PrefixStore(64 * 2**20)
    scorer = LogprobJudge(model, tok, judge("reference-score"), prefixes=store)
    calls = []
    original = model.forward

    @functools.wraps(original)
    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    model.forward = counting
    try:
        scorer.score([it for it in items() if it["id"].endswith("-a0")], batch_size=3)  # three questions, one pass
        assert len(calls) == 1 and store.misses == 3 and len(store.entries) >= 3
        calls.clear()
        scorer.score([it for it in items() if it["id"].endswith("-a1")], batch_size=3)  # all three reused
        assert len(calls) == 1 and store.hits == 3
    finally:
        model.forward = original
