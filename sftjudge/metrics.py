"""Cheap reference-based metrics computed beside the judge: exact match, token F1, JSON validity and fields."""

from __future__ import annotations

import json
from collections import Counter
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


def item_metrics(answer: str, reference: str) -> dict[str, float]:
    metrics = {"exact_match": float(exact_match(answer, reference)), "token_f1": token_f1(answer, reference)}
    metrics.update(json_metrics(answer, reference) or {})
    return metrics


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the items that have it (JSON metrics exist only for JSON references)."""
    keys = sorted({k for row in rows for k in row})
    return {k: round(mean(row[k] for row in rows if k in row), 4) for k in keys}
