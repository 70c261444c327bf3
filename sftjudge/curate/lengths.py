"""Token-length filter: lengths counted with the student's tokenizer after its chat template is applied.

Counting on the rendered chat (not the raw text) is what matters: it is what the model trains on, and template
tokens can be a large share of short rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftjudge.config import LengthConfig
from sftjudge.curate.rows import Example
from sftjudge.curate.steps import Dropped, StepResult
from sftjudge.models.chat import render_prompt


@dataclass(frozen=True, kw_only=True)
class LengthBounds:
    """Token bounds of a row, as set in data.length (built by `from_config`; None: no bound)."""

    min_prompt: int
    max_prompt: int | None
    min_completion: int
    max_completion: int | None
    max_total: int | None  # sft.max_seq_len when rows over it are dropped rather than truncated

    @classmethod
    def from_config(cls, length: LengthConfig, max_seq_len: int | None) -> LengthBounds:
        return cls(min_prompt=length.min_prompt_tokens, max_prompt=length.max_prompt_tokens,
                   min_completion=length.min_completion_tokens, max_completion=length.max_completion_tokens,
                   max_total=max_seq_len if length.drop_over_max_seq_len else None)


def token_lengths(tokenizer, rows: list[Example], batch_size: int = 512) -> dict[str, tuple[int, int] | str]:
    """(prompt tokens, completion tokens) per row id, the completion counted with its end-of-turn tokens.

    A row the chat template refuses to render (strict templates demand alternating user/assistant turns; jinja
    raises) gets the template's message instead of lengths, so it is quarantined, not fatal to the whole step.
    """
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    lengths: dict[str, tuple[int, int] | str] = {}
    for start in range(0, len(rows), batch_size):
        rendered = []
        for row in rows[start:start + batch_size]:
            try:
                full = tokenizer.apply_chat_template(
                    row.prompt_messages + [{"role": "assistant", "content": row.completion}], tokenize=False)
                rendered.append((row, render_prompt(tokenizer, row.prompt_messages), full))
            except JinjaTemplateError as exc:
                lengths[row.id] = f"the student's chat template refuses this conversation: {exc}"
        if not rendered:
            continue
        prompt_ids = tokenizer([p for _, p, _ in rendered], add_special_tokens=False)["input_ids"]
        full_ids = tokenizer([f for _, _, f in rendered], add_special_tokens=False)["input_ids"]
        for (row, _, _), p, f in zip(rendered, prompt_ids, full_ids):
            lengths[row.id] = (len(p), max(len(f) - len(p), 0))
    return lengths


def drop_by_length(rows: list[Example], lengths: dict[str, tuple[int, int] | str],
                   bounds: LengthBounds) -> StepResult:
    """Keep rows whose prompt, completion and total token counts are within `bounds`; say which bound failed.

    >>> from sftjudge.curate.rows import ChatMessage
    >>> row = Example(id="a", messages=(ChatMessage(role="user", content="q"),
    ...                                 ChatMessage(role="assistant", content="a")))
    >>> drop_by_length([row], {"a": (10, 3)}, LengthBounds.from_config(LengthConfig(), 12)).dropped[0].reason
    'longer than max_seq_len'
    """
    result = StepResult([])
    for row in rows:
        if isinstance(lengths[row.id], str):
            result.dropped.append(Dropped("length", "rejected by the chat template", row.source, row,
                                          detail=lengths[row.id]))
            continue
        prompt, completion = lengths[row.id]
        problem = _length_problem(prompt, completion, bounds)
        if problem:
            reason, detail = problem
            result.dropped.append(Dropped("length", reason, row.source, row,
                                          detail=f"{detail} (prompt {prompt}, completion {completion} tokens)"))
        else:
            result.kept.append(row)
    return result


def _length_problem(prompt: int, completion: int, b: LengthBounds) -> tuple[str, str] | None:
    if prompt < b.min_prompt:
        return "prompt too short", f"prompt under {b.min_prompt} tokens"
    if b.max_prompt is not None and prompt > b.max_prompt:
        return "prompt too long", f"prompt over {b.max_prompt} tokens"
    if completion < b.min_completion:
        return "completion too short", f"completion under {b.min_completion} tokens"
    if b.max_completion is not None and completion > b.max_completion:
        return "completion too long", f"completion over {b.max_completion} tokens"
    if b.max_total is not None and prompt + completion > b.max_total:
        return "longer than max_seq_len", f"total over {b.max_total} tokens"
    return None


def histogram(values: list[int], bins: int = 10) -> list[dict[str, int]]:
    """Equal-width bins over the observed range, for the data report.

    >>> histogram([1, 2, 3, 10], bins=3)
    [{'from': 1, 'to': 5, 'count': 3}, {'from': 5, 'to': 9, 'count': 0}, {'from': 9, 'to': 10, 'count': 1}]
    """
    if not values:
        return []
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for v in values:
        counts[min((v - low) // width, bins - 1)] += 1
    return [{"from": low + i * width, "to": min(low + (i + 1) * width, high), "count": c}
            for i, c in enumerate(counts)]
