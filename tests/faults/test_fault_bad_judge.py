"""Bad judge output - garbage, empty, out of range, a boolean, a judge that always answers "A" - never becomes a
number: it is counted as unparseable (or as a tie), the judge health gate trips and the run is not promoted."""

from __future__ import annotations

import json

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.decide.stage import decide_stage
from sftjudge.generate.backends import Generation
from sftjudge.judge.logprob import judgment_from_distribution
from sftjudge.judge.spec import JudgeSpec, Scale
from sftjudge.judge.stage import judge_stage
from sftjudge.judge.text import TextJudge
from sftjudge.run import files
from sftjudge.run.io import read_jsonl, write_jsonl
from sftjudge.run.registry import Registry

from .faultkit import clone_run, set_scores

# What the student "answered" for each test item, and what the scripted judge replies when it sees that answer.
REPLIES = {
    "GOOD-7": '{"score": 7}',
    "GOOD-3": 'Fair enough. {"score": 3}',
    "GARBAGE": "The answer looks fine to me, I would say about eight.",
    "EMPTY": "",
    "TOO-HIGH": '{"score": 11}',
    "BOOLEAN": '{"score": true}',
}


class EchoTemplate:
    """Stands in for a tokenizer: the chat rendered as plain text, so the scripted judge can read the answer."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "\n".join(m["content"] for m in messages)


class ScriptedGenerator:
    def __init__(self, reply_for):
        self.reply_for, self.prompts = reply_for, []

    def generate(self, prompts, params):
        self.prompts += prompts
        return [Generation(self.reply_for(p), 10, 5, "stop", 0.0) for p in prompts]


def pointwise_reply(prompt: str) -> str:
    replies = [reply for tag, reply in REPLIES.items() if tag in prompt]
    assert replies, f"the judge was asked about an answer this test did not plant: {prompt[-200:]!r}"
    return replies[0]


class ScriptedJudge:
    """Replaces LoadedJudge: no model; text-mode judging with scripted replies (pairwise: always "A")."""

    def __init__(self, config, home, log=None):
        self.params = 10**12  # larger than any student, so only the reply problems are under test

    def identity(self, spec):
        return f"{spec.name}@scripted"

    def scorer(self, spec):
        reply = (lambda prompt: '{"winner": "A"}') if spec.kind == "choice" else pointwise_reply
        return TextJudge(ScriptedGenerator(reply), EchoTemplate(), spec)

    def budgets(self):
        return {"setting": "auto", "context_window": None, "tokens": {}}  # prompts are never fitted here

    def close(self):
        pass


def with_answers(run_path, answers):
    generations = read_jsonl(run_path / files.GENERATIONS)
    write_jsonl(run_path / files.GENERATIONS, [g | {"text": a} for g, a in zip(generations, answers)])


@pytest.fixture
def scripted_judge(monkeypatch):
    monkeypatch.setattr("sftjudge.judge.stage.LoadedJudge", ScriptedJudge)


def test_bad_replies_are_counted_never_scored_and_block_promotion(base_run, tmp_path, scripted_judge):
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "r1", reset=("judge", "decide"))
    with_answers(run_path, list(REPLIES))
    config = load_config(run_path / files.CONFIG, [f"runs_dir={runs}", "judge.mode=text", "judge.anchors=false"])
    judge_stage(str(run_path), config)

    judged = {j["answer"]: j for j in read_jsonl(run_path / files.JUDGMENTS)}
    assert (judged["GOOD-7"]["score"], judged["GOOD-3"]["score"]) == (7.0, 3.0)
    for tag in ("GARBAGE", "EMPTY", "TOO-HIGH", "BOOLEAN"):
        assert judged[tag]["score"] is None, f"{tag} reply became the number {judged[tag]['score']}"
        assert judged[tag]["unparseable"] and REPLIES[tag] in judged[tag]["raw"]  # the reason and the evidence
    assert "outside 1-10" in judged["TOO-HIGH"]["unparseable"]
    metrics = json.loads((run_path / files.METRICS).read_text())
    assert (metrics["items"], metrics["scored"], metrics["unparseable"]) == (6, 2, 4)
    assert metrics["judge_score_mean"] == 5.0  # the mean of the two real scores, nothing filled in
    assert not metrics["health"]["valid"]
    assert any("unparseable rate 67%" in p for p in metrics["health"]["problems"])

    decision = decide_stage(str(run_path), config)["counts"]
    assert decision["action"] != "promote"
    reasons = json.loads((run_path / files.DECISION).read_text())["reasons"]
    assert any(r.startswith("judge signal invalid: unparseable rate") for r in reasons)
    assert any(r.startswith("unparseable judgments 67%") for r in reasons)
    assert Registry.in_runs_dir(runs).champion() is None


def test_a_judge_that_always_answers_a_wins_nothing_and_trips_the_health_gate(base_run, tmp_path, scripted_judge):
    runs = tmp_path / "runs"
    champion = clone_run(base_run, runs, "champion", reset=("decide",))
    set_scores(champion, [3.0, 3.5, 4.0, 3.0, 3.5, 4.0])
    config = load_config(champion / files.CONFIG, [f"runs_dir={runs}", "judge.mode=text", "judge.anchors=false",
                                                     "judge.health.min_swap_consistency=0.6"])
    assert decide_stage(str(champion), config)["counts"]["action"] == "promote"

    challenger = clone_run(base_run, runs, "challenger", reset=("judge", "decide"))
    with_answers(challenger, ["GOOD-7"] * 3 + ["GOOD-3"] * 3)
    judge_stage(str(challenger), config)
    metrics = json.loads((challenger / files.METRICS).read_text())
    pairwise = metrics["pairwise"]
    assert pairwise["pairs"] == 6 and pairwise["first_position_rate"] == 1.0
    assert (pairwise["wins"], pairwise["losses"], pairwise["swap_consistency"]) == (0, 0, 0.0)
    assert all(o["outcome"] == "tie" and not o["consistent"] for o in read_jsonl(challenger / files.PAIRWISE))
    assert not metrics["health"]["valid"]
    assert any("swap consistency 0%" in p for p in metrics["health"]["problems"])

    decision = decide_stage(str(challenger), config)["counts"]
    assert decision["action"] != "promote"
    assert Registry.in_runs_dir(runs).champion()["run_id"] == "champion"


@pytest.mark.parametrize("reply", ["", "   ", "no json", '{"score": "ten"}', '{"score": 0}', '{"score": -3}',
                                   '{"score": 11}', '{"score": 7.5}', '{"score": NaN}', '{"score": true}',
                                   '{"score": null}', '{"score": [7]}', '{"rating": 7}', "{\"score\": 7"])
def test_an_unreadable_reply_gets_one_repair_request_then_stays_unparseable(reply):
    spec = JudgeSpec(name="s", prompt_file="p", prompt="{instruction} {reference} {answer}", scale=Scale())
    generator = ScriptedGenerator(lambda prompt: reply)
    [judgment] = TextJudge(generator, EchoTemplate(), spec).score(
        [{"id": "x", "instruction": "q", "reference": "r", "answer": "a"}])
    assert judgment.score is None and judgment.unparseable
    assert len(generator.prompts) == 2 and "could not be read" in generator.prompts[1]


def test_no_probability_on_any_label_is_unparseable_not_a_score():
    spec = JudgeSpec(name="s", prompt_file="p", scale=Scale(min=1, max=3))
    judgment = judgment_from_distribution("x", {"1": 0.0, "2": 0.0, "3": 0.0}, spec, 5, False)
    assert judgment.score is None and "no probability" in judgment.unparseable
    assert judgment.to_json()["score"] is None
