"""The review sample: the test items a person grades, chosen to test the judge where it matters, then frozen.

Three quarters spread evenly over the judge-score range (the judge's lows, middles and highs all get checked), one
quarter where the judge and the cheap metrics disagree most (the judge's likeliest mistakes). When a champion
answered the same items, each sample item also carries its answer, in a random order that the page never reveals.
The sample is written once per run (`review/sample.jsonl`) with a content hash per item and one for the whole
sample, so labels can always be matched to exactly what was shown.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from sftjudge.errors import DataError
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_json_if_present, read_jsonl, write_jsonl

AGREEMENT_METRIC = "similarity"  # the cheap signal the judge is checked against (token F1 when it is missing)


def item_hash(item: dict[str, Any]) -> str:
    """What a person saw for one item: question, reference and answer(s)."""
    shown = {k: item.get(k) for k in ("id", "instruction", "reference", "answer", "champion_answer")}
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def sample_hash(items: list[dict[str, Any]]) -> str:
    return hashlib.sha256("".join(sorted(i["content_sha256"] for i in items)).encode()).hexdigest()


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank / max(1, len(values) - 1)
    return ranks


def choose(judged: list[dict[str, Any]], size: int) -> list[tuple[dict[str, Any], str]]:
    """(judgment, why) for up to `size` judged items: spread over the score range, plus the largest
    judge-versus-metric disagreements.

    >>> judged = [{"id": str(i), "score": float(i), "metrics": {"similarity": (10 - i) / 10}} for i in range(1, 11)]
    >>> [(j["id"], why) for j, why in choose(judged, 4)]
    [('1', 'disagreement'), ('2', 'score range'), ('6', 'score range'), ('10', 'score range')]
    """
    scored = [j for j in judged if j.get("score") is not None]
    if len(scored) <= size:
        return [(j, "score range") for j in scored]
    metric = [j["metrics"].get(AGREEMENT_METRIC, j["metrics"].get("token_f1", 0.0)) for j in scored]
    gap = [abs(a - b) for a, b in zip(_ranks([j["score"] for j in scored]), _ranks(metric))]
    disagreements = sorted(range(len(scored)), key=lambda i: (-gap[i], scored[i]["id"]))[:size // 4]
    rest = sorted((i for i in range(len(scored)) if i not in disagreements), key=lambda i: scored[i]["score"])
    spread = size - len(disagreements)
    picked = {rest[round(k * (len(rest) - 1) / max(1, spread - 1))] for k in range(spread)}
    chosen = [(i, "disagreement") for i in disagreements] + [(i, "score range") for i in sorted(picked)]
    return [(scored[i], why) for i, why in sorted(chosen, key=lambda c: scored[c[0]]["score"])]


def build_sample(run: RunDir, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """The review sample for a judged run (not written)."""
    if not (run / files.JUDGMENTS).is_file():
        raise DataError(f"{run.path}: no {files.JUDGMENTS}; review a run whose judge stage has finished")
    judged = read_jsonl(run / files.JUDGMENTS)
    generations = {g["id"]: g for g in read_jsonl(run / files.GENERATIONS)}
    champion = _champion_answers(run)
    rng = random.Random(seed)
    sample = []
    for judgment, why in choose(judged, size):
        gen = generations[judgment["id"]]
        item = {"id": judgment["id"], "instruction": gen["instruction"], "reference": gen["reference"],
                "answer": gen["text"], "judge_score": judgment["score"], "why": why}
        if judgment["id"] in champion:
            item["champion_answer"] = champion[judgment["id"]]
            item["run_first"] = rng.random() < 0.5
        item["content_sha256"] = item_hash(item)
        sample.append(item)
    return sample


def _champion_answers(run: RunDir) -> dict[str, str]:
    """The answers pairwise compared this run with (their ids and texts), when there was a champion."""
    metrics = read_json_if_present(run / files.METRICS) or {}
    champion_dir = (metrics.get("pairwise") or {}).get("champion_run_dir")
    if not champion_dir or not (Path(champion_dir) / files.GENERATIONS).is_file():
        return {}
    return {g["id"]: g["text"] for g in read_jsonl(Path(champion_dir) / files.GENERATIONS)}


def load_or_build(run: RunDir, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """The run's frozen sample: read when it exists (labels refer to it), else built and written once."""
    path = run / files.REVIEW_SAMPLE
    if path.is_file():
        sample = read_jsonl(path)
        for line_no, item in enumerate(sample, start=1):
            if item.get("content_sha256") != item_hash(item):
                raise DataError(f"{path}:{line_no}: item {item.get('id')!r} no longer matches its content_sha256 "
                                f"(field 'answer', 'reference' or 'instruction' was edited); labels refer to what was "
                                f"shown - restore the file, or move review/ away to start a new review")
        return sample
    sample = build_sample(run, size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, sample)
    return sample
