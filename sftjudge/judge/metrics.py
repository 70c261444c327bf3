"""Cheap reference-based metrics computed beside the judge: exact match, token F1, JSON validity and fields."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from statistics import mean
from typing import Any


def _norm(text: str) -> str:
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> bool:
    """Equal after collapsing whitespace.

    >>> exact_match(' {"a": 1}\\n', '{"a":  1}')
    True
    """
    return _norm(answer) == _norm(reference)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens.

    >>> token_f1("the cat sat", "the cat")
    0.8
    """
    a, r = answer.split(), reference.split()
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or common == 0:
        return float(a == r)
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def json_metrics(answer: str, reference: str) -> dict[str, float] | None:
    """For JSON-object references: is the answer a JSON object, and what share of the reference's fields match.

    >>> json_metrics('{"a": 1, "b": 2}', '{"a": 1, "b": 3}')
    {'json_valid': 1.0, 'json_field_accuracy': 0.5}
    >>> json_metrics('nope', '{"a": 1}')
    {'json_valid': 0.0, 'json_field_accuracy': 0.0}
    >>> json_metrics('x', 'plain text') is None
    True
    """
    ref = _json_object(reference)
    if ref is None:
        return None
    got = _json_object(answer)
    if got is None:
        return {"json_valid": 0.0, "json_field_accuracy": 0.0}
    matched = sum(1 for key, value in ref.items() if got.get(key) == value)
    return {"json_valid": 1.0, "json_field_accuracy": matched / len(ref) if ref else 1.0}


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, the Google Research implementation).

    >>> round(rouge_l("the cat sat", "the cat sat on the mat"), 3)
    0.667
    """
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure


def bleu(answer: str, reference: str) -> float:
    """Sentence BLEU on a 0-1 scale (sacrebleu, with its standard 13a tokenisation and exponential smoothing).

    >>> bleu("the cat sat on the mat", "the cat sat on the mat")
    1.0
    """
    import sacrebleu

    return round(sacrebleu.sentence_bleu(answer, [reference]).score / 100.0, 6)


@dataclass(frozen=True)
class FormatRule:
    """What a well-formed answer looks like: any text, a JSON value (optionally matching a schema), or a regex."""

    kind: str  # judge.format: "none" | "json" | "regex"
    regex: str | None = None
    schema: dict[str, Any] | None = None


def format_compliance(answer: str, rule: FormatRule) -> float | None:
    """1.0 when the answer has the required form, 0.0 when not, None when no form is required.

    >>> format_compliance('{"a": 1}', FormatRule("json", schema={"type": "object", "required": ["a"]}))
    1.0
    >>> format_compliance('{"b": 1}', FormatRule("json", schema={"type": "object", "required": ["a"]}))
    0.0
    >>> format_compliance("ORDER-12", FormatRule("regex", regex=r"ORDER-\\d+"))
    1.0
    """
    if rule.kind == "none":
        return None
    if rule.kind == "regex":
        return float(re.fullmatch(rule.regex or "", answer.strip()) is not None)
    try:
        value = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        return 0.0
    if rule.schema is None:
        return 1.0
    import jsonschema

    return float(jsonschema.Draft202012Validator(rule.schema).is_valid(value))


def item_metrics(answer: str, reference: str, rule: FormatRule | None = None) -> dict[str, float]:
    """Every cheap metric for one answer; JSON field metrics only when the reference is a JSON object."""
    metrics = {"exact_match": float(exact_match(answer, reference)), "token_f1": token_f1(answer, reference),
               "rouge_l": round(rouge_l(answer, reference), 6), "bleu": bleu(answer, reference)}
    metrics.update(json_metrics(answer, reference) or {})
    compliance = format_compliance(answer, rule) if rule else None  # no rule: no format to comply with
    if compliance is not None:
        metrics["format_compliance"] = compliance
    return metrics


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the items that have it (JSON metrics exist only for JSON references)."""
    keys = sorted({k for row in rows for k in row})
    return {k: round(mean(row[k] for row in rows if k in row), 4) for k in keys}
