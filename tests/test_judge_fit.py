"""An over-long judge prompt gives way in the answer, then the reference - never the question or the reference
first (before, a left cut dropped the system text, the question and the reference, and long rambling answers
outscored short right ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjudge.config import JudgeHealthConfig
from sftjudge.judge.fit import fit_item
from sftjudge.judge.health import judge_health
from sftjudge.judge.logprob import LogprobJudge
from sftjudge.judge.spec import load_judge
from sftjudge.judge.text import TextJudge

REPO = Path(__file__).resolve().parent.parent
QUESTION = "QUESTIONMARK: which port does the billing router listen on?"
REFERENCE = "REFERENCEMARK: port 8443."


def long_text(tok, tokens: int, start: str = "ANSWERSTART", end: str = "ANSWEREND") -> str:
    filler = "the router rambles about cables and modems and other things " * 20
    text = start
    while len(tok(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += " " + filler
    return text + " " + end


@pytest.mark.model
def test_a_5000_token_answer_keeps_question_and_reference_in_the_judge_prompt(tiny_model):
    model, tok = tiny_model
    spec = load_judge(REPO / "judges", "reference-score")
    judge = LogprobJudge(model, tok, spec, max_prompt_tokens=512)
    answer = long_text(tok, 5000)
    assert len(tok(answer, add_special_tokens=False)["input_ids"]) >= 5000
    ids, cut = judge.encode({"id": "x", "instruction": QUESTION, "reference": REFERENCE, "answer": answer})
    prompt = tok.decode(ids)
    assert cut and len(ids) <= 512
    for kept in ("QUESTIONMARK", "REFERENCEMARK", spec.system[:40], "ANSWERSTART", "ANSWEREND", "tokens cut here"):
        assert kept in prompt, f"{kept!r} was cut from the judge prompt"
    assert prompt.rstrip().endswith(spec.answer_prefix.strip())  # the rating instruction ends the prompt

    [judgment] = judge.score([{"id": "x", "instruction": QUESTION, "reference": REFERENCE, "answer": answer}])
    assert judgment.truncated and judgment.prompt_tokens <= 512 and judgment.score is not None


@pytest.mark.model
def test_the_reference_gives_way_only_when_the_answer_cannot(tiny_model):
    model, tok = tiny_model
    judge = LogprobJudge(model, tok, load_judge(REPO / "judges", "reference-score"), max_prompt_tokens=400)
    reference = long_text(tok, 2000, "REFSTART", "REFEND")
    ids, cut = judge.encode({"id": "x", "instruction": QUESTION, "reference": reference, "answer": "port 8443"})
    prompt = tok.decode(ids)
    assert cut and len(ids) <= 400
    assert all(k in prompt for k in ("QUESTIONMARK", "REFSTART", "REFEND", "port 8443", "tokens cut here"))


@pytest.mark.model
def test_a_prompt_that_fits_is_left_alone(tiny_model):
    model, tok = tiny_model
    judge = LogprobJudge(model, tok, load_judge(REPO / "judges", "reference-score"), max_prompt_tokens=1024)
    item = {"id": "x", "instruction": QUESTION, "reference": REFERENCE, "answer": "port 8443"}
    assert judge.encode(item) == (judge.prompt_ids(item), False)
    assert fit_item(item, lambda it: 10, tok, 1024) == (item, False)


@pytest.mark.model
def test_pairwise_answers_are_cut_longest_first(tiny_model):
    _, tok = tiny_model
    item = {"id": "x", "instruction": QUESTION, "reference": REFERENCE, "answer_a": long_text(tok, 3000),
            "answer_b": "short and right: port 8443"}

    def measure(it):
        return sum(len(tok(str(v), add_special_tokens=False)["input_ids"]) for v in it.values())

    fitted, cut = fit_item(item, measure, tok, 700)
    assert cut and measure(fitted) <= 700
    assert fitted["answer_b"] == item["answer_b"] and fitted["reference"] == REFERENCE
    assert "tokens cut here" in fitted["answer_a"] and fitted["answer_a"].startswith("ANSWERSTART")


class EchoGenerator:
    def __init__(self):
        self.prompts = []

    def generate(self, prompts, params):
        from sftjudge.generate.backends import Generation

        self.prompts += prompts
        return [Generation(text='{"score": 5}', prompt_tokens=0, completion_tokens=1, finish_reason="stop",
                           seconds=0.0) for _ in prompts]


@pytest.mark.model
def test_text_judges_fit_their_prompts_the_same_way(tiny_model):
    _, tok = tiny_model
    generator = EchoGenerator()
    judge = TextJudge(generator, tok, load_judge(REPO / "judges", "reference-score"), max_prompt_tokens=450)
    [judgment] = judge.score([{"id": "x", "instruction": QUESTION, "reference": REFERENCE,
                               "answer": long_text(tok, 3000)}])
    [prompt] = generator.prompts
    assert judgment.truncated and judgment.score == 5.0
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 450
    assert "QUESTIONMARK" in prompt and "REFERENCEMARK" in prompt and "tokens cut here to fit the judge" in prompt


def test_health_warns_when_many_prompts_were_cut():
    judged = [{"score": s, "unparseable": None, "label_mass": 0.9, "truncated": i < 3}
              for i, s in enumerate((3.0, 7.5, 9.0, 4.0, 6.0))]
    health = judge_health(judged, None, JudgeHealthConfig(max_truncated_rate=0.2))
    assert health.valid and health.measures["truncated_rate"] == 0.6
    assert health.warnings == ["3 of 5 judge prompts (60%) had their answer cut to fit judge.max_prompt_tokens: the "
                               "judge saw the opening and the ending of those answers only"]
    assert judge_health(judged, None, JudgeHealthConfig(max_truncated_rate=0.6)).warnings == []


def _tokens_text(tok, n: int, seed: int) -> str:
    """Text of about `n` tokens of this tokenizer (random words of its own vocabulary)."""
    import random

    rng = random.Random(seed)
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2]
    text = ""
    while len(tok(text, add_special_tokens=False)["input_ids"]) < n:
        text += " " + rng.choice(words)
    return text.strip()


@pytest.fixture(scope="module")
def long_context_judge(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a 4096-token window (rotary positions: only config.json says how far it reaches), so
    that a budget is set by the run's sizes, not by the tiny model's own 1024 tokens."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("long-judge") / "judge"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(settings | {"max_position_embeddings": 4096}))
    return folder


@pytest.mark.model
@pytest.mark.parametrize("definition", ["reference-score", "rubric", "pairwise"])
def test_an_auto_budget_never_cuts_an_answer_the_run_could_generate(sftjudge_home, long_context_judge, definition):
    from sftjudge.config import RunConfig
    from sftjudge.judge.model import LoadedJudge

    config = RunConfig(judge={"model": str(long_context_judge), "precision": "fp32"}, sft={"max_seq_len": 256},
                       generate={"max_new_tokens": 400}, regression={"enabled": False})
    loaded = LoadedJudge(config, sftjudge_home)
    spec = load_judge(REPO / "judges", definition)
    tok = loaded.tokenizer
    question, reference = _tokens_text(tok, 160, 1), _tokens_text(tok, 96, 2)  # a row at sft.max_seq_len
    longest = {"answer": _tokens_text(tok, 400, 3), "answer_a": _tokens_text(tok, 400, 4),
               "answer_b": _tokens_text(tok, 400, 5)}  # answers of generate.max_new_tokens
    item = {"id": "x", "instruction": question, "reference": reference} | longest
    prompt = LogprobJudge(None, tok, spec, max_prompt_tokens=loaded.prompt_budget(spec))
    assert not prompt.encode(item)[1], "an answer of max_new_tokens was cut"
    if definition == "pairwise":  # before: the fixed 1024 cut both answers of a pairwise prompt
        assert LogprobJudge(None, tok, spec, max_prompt_tokens=1024).encode(item)[1]
    smaller = LogprobJudge(None, tok, spec, max_prompt_tokens=len(prompt.prompt_ids(item)) - 8)
    assert smaller.encode(item)[1]  # the same item does not fit a smaller budget: the check above can fail
    rambling = item | {k: _tokens_text(tok, 1500, 6) for k in longest}  # far longer than the run can generate
    assert prompt.encode(rambling)[1]  # only that gives way
    loaded.scorer(spec)
    assert loaded.budgets()["tokens"] == {spec.name: loaded.prompt_budget(spec)}  # what the report shows
    assert loaded.budgets()["context_window"] == 4096


def test_a_cached_judgment_is_reused_only_under_a_budget_it_fits(tmp_path):
    from sftjudge.judge.cache import JudgmentCache, judge_cached
    from sftjudge.judge.spec import Judgment

    class Scorer:
        """Prompts of 600 tokens: cut (to the budget) when the budget is smaller."""

        def __init__(self, budget):
            self.max_prompt_tokens, self.calls = budget, 0

        def score(self, items, batch_size=4):
            self.calls += len(items)
            cut = self.max_prompt_tokens < 600
            return [Judgment(i["id"], score=5.0 if cut else 7.0, label_mass=0.9, truncated=cut,
                             prompt_tokens=min(600, self.max_prompt_tokens)) for i in items]

    items = [{"id": "a", "answer": "x"}]
    cache = JudgmentCache(tmp_path / "anchors.jsonl").load()
    small, large, same = Scorer(400), Scorer(2000), Scorer(400)
    assert judge_cached(small, cache, items, "judge", 4)[0]["score"] == 5.0
    # before: the cut judgment (5.0) came back for a budget that holds the whole prompt
    assert judge_cached(large, cache, items, "judge", 4)[0]["score"] == 7.0 and large.calls == 1
    assert judge_cached(Scorer(800), cache, items, "judge", 4)[0]["score"] == 7.0  # whole, 600 <= 800: reused
    cache = JudgmentCache(tmp_path / "anchors.jsonl").load()  # as the next run reads it
    assert judge_cached(same, cache, items, "judge", 4)[0]["score"] == 5.0 and same.calls == 1  # cut to 400 again
    assert judge_cached(Scorer(400), cache, items, "judge", 4)[0]["score"] == 5.0
