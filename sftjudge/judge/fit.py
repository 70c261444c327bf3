"""Fitting a judge prompt into the judge's context without losing what the judge compares against.

A prompt over `judge.max_prompt_tokens` gives way in a fixed order: the candidate answer(s) are cut in the middle
first (the opening and the ending stay, a marker says how much is missing), then - only if that is not enough -
the reference. The system text, the question, the criteria and the rating instruction are never cut: cutting the
prompt from the left, as before, dropped the reference first and let long rambling answers score above short
right ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Fields that may give way, group by group: the candidates first, the reference only when they cannot.
SHRINK_ORDER = (("answer", "answer_a", "answer_b"), ("reference",))
KEEP_TOKENS = 16  # a cut field keeps at least this many tokens around the marker
_MARKER_ALLOWANCE = 24  # tokens the marker itself may take; the loop re-measures anyway
MARKER_TOKENS = 32  # room an 'auto' budget leaves beyond the definition's text (the answer prefix, token seams)
_ROUNDS = 12  # token boundaries shift a little after a cut: re-measure and cut again, a bounded number of times


def cut_marker(tokens: int, total: int) -> str:
    """The visible note left where the middle of a field was cut: how much, and of how long a text (so the judge
    still sees how long an answer was).

    >>> cut_marker(4812, 5000)
    '\\n[... 4812 of its 5000 tokens cut here to fit the judge ...]\\n'
    """
    return f"\n[... {tokens} of its {total} tokens cut here to fit the judge ...]\n"


def fit_item(item: dict[str, Any], prompt_tokens: Callable[[dict[str, Any]], int], tokenizer,
             max_tokens: int) -> tuple[dict[str, Any], bool]:
    """The item with its answer(s) - then its reference - cut in the middle until its rendered prompt fits.

    `prompt_tokens(item)` measures the judge's whole rendered prompt for an item. Returns (item, cut): the item
    unchanged and False when it fits; else a copy with the cuts and True. When even the shortest cuts do not fit
    (the question alone is too long), the copy is returned as far as it got and the caller must cut further.
    """
    if prompt_tokens(item) <= max_tokens:
        return item, False
    fitted = dict(item)
    original = {f: tokenizer(str(item[f]), add_special_tokens=False)["input_ids"]
                for group in SHRINK_ORDER for f in group if f in item}
    cut: dict[str, int] = {}
    for group in SHRINK_ORDER:
        for _ in range(_ROUNDS):
            over = prompt_tokens(fitted) - max_tokens
            if over <= 0:
                return fitted, True
            room = {f: len(original[f]) - cut.get(f, 0) - KEEP_TOKENS for f in group if f in original}
            field = max((f for f in room if room[f] > 0), key=lambda f: room[f], default=None)
            if field is None:
                break
            cut[field] = cut.get(field, 0) + min(room[field], over + _MARKER_ALLOWANCE)
            fitted[field] = _cut_middle(original[field], cut[field], tokenizer)
    return fitted, True


def _cut_middle(ids: list[int], n: int, tokenizer) -> str:
    keep = len(ids) - n
    head = (keep + 1) // 2
    tail = ids[len(ids) - (keep - head):] if keep - head else []
    return (tokenizer.decode(ids[:head], skip_special_tokens=True) + cut_marker(n, len(ids))
            + tokenizer.decode(tail, skip_special_tokens=True))
