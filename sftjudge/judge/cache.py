"""Per-run judgment cache: finished judgments appended item by item, so a retried stage judges only what is missing."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from sftjudge.errors import JudgeError
from sftjudge.judge.spec import MASS_SLACK, JudgeSpec
from sftjudge.run.jsonl_cache import KeyedJsonl


class JudgmentCache(KeyedJsonl):
    """Finished judgments keyed by a hash of (judge, item): a retried judge stage only judges what is missing."""

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def judge_cached(scorer, cache: JudgmentCache, items: list[dict[str, Any]], tag: str,
                 batch_size: int) -> list[dict[str, Any]]:
    """Judge every item not yet in the cache (in batches, each appended when done); return all, in order.

    A cached judgment stands for the scorer's prompt budget only if its prompt was whole and fits that budget, or
    it was cut to that very budget: the anchors cache is shared by runs whose budgets differ (judge.max_prompt_tokens
    =auto follows sft.max_seq_len and generate.max_new_tokens), and a cut prompt is another prompt.
    """
    budget = getattr(scorer, "max_prompt_tokens", None)
    keys = [cache.key(tag, *(str(item[k]) for k in sorted(item))) for item in items]
    todo = [(key, item) for key, item in zip(keys, items) if not _holds(cache.records.get(key), budget)]
    for start in range(0, len(todo), batch_size * 4):
        chunk = todo[start:start + batch_size * 4]
        judged = scorer.score([item for _, item in chunk], batch_size=batch_size)
        for judgment in judged:
            check_finite(judgment)
        cache.append([{"key": key, "budget": budget} | j.to_json() for (key, _), j in zip(chunk, judged)])
    return [cache.records[key] for key in keys]


def _holds(record: dict[str, Any] | None, budget: int | None) -> bool:
    """Whether a cached judgment is the one the scorer would give now (see judge_cached)."""
    if record is None:
        return False
    if budget is None:
        return True
    if record.get("truncated"):
        return record.get("budget") == budget
    return (record.get("prompt_tokens") or 0) <= budget


def check_finite(judgment) -> None:
    """Refuse a judgment that is not a number a decision can rest on - a NaN or infinite score or dimension, a label
    mass above 1 - before it is cached (the anchors cache is shared across runs) or scored; raises JudgeError."""
    numbers = {"score": judgment.score, "label_mass": judgment.label_mass} | {
        f"dimension {name}": value for name, value in judgment.dimensions.items()}
    bad = {name: value for name, value in numbers.items() if value is not None
           and not (math.isfinite(value) and (name != "label_mass" or value <= 1 + MASS_SLACK))}
    if bad:
        raise JudgeError(f"the judge gave item {judgment.id} {', '.join(f'{k} {v!r}' for k, v in bad.items())}: not "
                         f"a usable judgment (the model or server is broken); nothing of it was kept")


@dataclass(kw_only=True)
class CachedJudge:
    """The stage's judge model with the run's judgment cache: any definition, each item judged once."""

    loaded: Any  # LoadedJudge (or a fake with .scorer(spec) and .identity(spec))
    cache: JudgmentCache
    batch_size: int

    def judge(self, spec: JudgeSpec, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Judgment records (as in the cache) for `items` under `spec`, in order; only missing ones are judged."""
        return judge_cached(self.loaded.scorer(spec), self.cache, items, self.loaded.identity(spec), self.batch_size)
