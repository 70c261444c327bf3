"""Length-controlled comparisons (issue 27): a judge that rewards length alone is caught - the raw difference says
"better", the difference at equal length stays inside noise and the decision holds - while a real improvement with
no length effect keeps its promotion."""

from __future__ import annotations

import math
import random

from helpers import decide_rules

from sftjudge.decide.length import length_controlled
from sftjudge.decide.records import RunResult
from sftjudge.decide.rules import decide

ITEMS = 40


def answer_sets(bias: float, gain: float, seed: int = 0):
    """Champion and run answers to ITEMS questions, scored by a judge that adds `bias` per log of relative length;
    the run's answers are `gain` better in quality and 1.3-4x as long as the champion's."""
    rng = random.Random(seed)
    champion, run = {}, {}
    for i in range(ITEMS):
        reference = "x" * rng.randint(40, 120)
        quality = rng.uniform(4.0, 8.0)
        short = "y" * int(len(reference) * rng.uniform(0.6, 1.4))
        long = "z" * int(len(short) * rng.uniform(1.3, 4.0))

        def judged(text: str, q: float) -> float:
            return q + bias * math.log((1 + len(text)) / (1 + len(reference))) + rng.gauss(0, 0.3)

        champion[f"q{i}"] = {"answer": short, "reference": reference, "score": judged(short, quality)}
        run[f"q{i}"] = {"answer": long, "reference": reference, "score": judged(long, quality + gain)}
    return run, champion


def as_result(run_id: str, items: dict) -> RunResult:
    scores = {i: v["score"] for i, v in items.items()}
    return RunResult(run_id=run_id, judge_score=sum(scores.values()) / len(scores), train_loss=0.5, val_loss=0.6,
                     test_fingerprint="t", judge_key="j", item_scores=scores,
                     item_texts={i: {"answer": v["answer"], "reference": v["reference"]} for i, v in items.items()})


RULES = decide_rules(min_improvement=0.25)


def test_a_judge_that_rewards_length_is_caught_and_does_not_promote():
    run, champion = answer_sets(bias=1.0, gain=0.0)
    control = length_controlled(run, champion)
    low, high = control["raw_ci"]
    assert control["raw"] > 0.5 and low > 0.25  # raw: "better", clearly
    clow, chigh = control["controlled_ci"]
    assert clow < 0 < chigh and abs(control["controlled"]) < 0.25  # at equal length: nothing
    assert control["beyond_noise"] and control["with_length"] > 0.5
    decision = decide(as_result("run", run), as_result("champ", champion), RULES)
    # before: promoted on the raw +0.8
    assert decision.action == "hold", decision.reasons
    assert "at equal answer length" in decision.reasons[0] and "came with length" in decision.reasons[0]
    assert decision.comparison["length_control"]["beyond_noise"]


def test_a_real_improvement_without_a_length_effect_is_still_promoted():
    run, champion = answer_sets(bias=0.0, gain=1.0)
    control = length_controlled(run, champion)
    assert not control["beyond_noise"] and control["controlled_ci"][0] > 0.25
    decision = decide(as_result("run", run), as_result("champ", champion), RULES)
    assert decision.action == "promote", decision.reasons
    assert "at equal answer length" not in decision.reasons[0]


def test_too_short_and_too_long_both_show_in_the_fit():
    """A judge that punishes distance from the reference's length either way: a straight line in length would see
    nothing when the run is too long on half the items and too short on the other half."""
    rng = random.Random(3)
    champion, run = {}, {}
    for i in range(ITEMS):
        reference = "x" * 80
        far = "z" * int(80 * math.exp(rng.uniform(-1.8, 1.8)))  # from a sixth to six times the reference's length
        champion[f"q{i}"] = {"answer": "y" * 80, "reference": reference, "score": 7 + rng.gauss(0, 0.2)}
        run[f"q{i}"] = {"answer": far, "reference": reference,
                        "score": 7 - 0.8 * math.log((1 + len(far)) / 81) ** 2 + rng.gauss(0, 0.2)}
    control = length_controlled(run, champion)
    assert control["raw"] < -0.5 and control["beyond_noise"]
    assert control["length_terms"][1] < -0.5  # the squared term carries it
    assert abs(control["controlled"]) < 0.3


def test_pairwise_outcomes_get_a_length_controlled_win_rate():
    rng = random.Random(5)
    run, champion = {}, {}
    for i in range(ITEMS):
        reference = "x" * 60
        ratio = rng.uniform(0.8, 4.0)
        run[f"q{i}"] = {"answer": "z" * int(60 * ratio), "reference": reference,
                        "outcome": "win" if rng.random() < 1 / (1 + math.exp(-2.0 * math.log(ratio))) else "loss"}
        champion[f"q{i}"] = {"answer": "y" * 60, "reference": reference}
    control = length_controlled(run, champion, outcome="pairwise")
    assert control["measure"] == "win rate" and control["raw"] > 0.6
    assert 0.3 < control["controlled"] < 0.65 and control["beyond_noise"]


def test_too_few_items_give_no_length_control():
    run, champion = answer_sets(bias=1.0, gain=0.0)
    few = {i: run[i] for i in list(run)[:5]}
    assert length_controlled(few, champion) is None
