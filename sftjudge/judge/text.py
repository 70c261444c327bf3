"""Text-mode judging for large judges (GPU/vLLM): the judge writes JSON, which is validated, never guessed.

A reply that does not validate gets one repair request; what still fails is recorded as unparseable with the
reason and the raw text - never turned into a number (FastChat's `rating = -1` is the pattern avoided here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError, field_validator

from sftjudge.config_judge import JUDGE_REPLY_TOKENS
from sftjudge.judge.fit import fit_item
from sftjudge.judge.spec import JudgeSpec, Judgment


@dataclass(frozen=True)
class Unparseable:
    reason: str


class ScoreReply(BaseModel):
    score: int

    @field_validator("score", mode="before")
    @classmethod
    def _not_a_boolean(cls, value):
        # pydantic would read true as 1 and false as 0: a yes/no reply is not a score.
        if isinstance(value, bool):
            raise ValueError("a boolean is not a score")
        return value


class ChoiceReply(BaseModel):
    winner: str


def first_json_object(text: str) -> str | None:
    """The first balanced {...} in `text` (braces inside strings respected), or None.

    >>> first_json_object('Sure! {"score": 7, "why": "a {b}"} thanks')
    '{"score": 7, "why": "a {b}"}'
    >>> first_json_object("no json here") is None
    True
    """
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                escaped = ch == "\\" and not escaped
                if ch == '"' and not escaped:
                    in_string = False
                continue
            if ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def parse_reply(text: str, spec: JudgeSpec) -> int | str | Unparseable:
    """Read a judge's JSON reply: an int score within the scale, or a known choice label.

    >>> from sftjudge.judge.spec import Scale
    >>> spec = JudgeSpec(name="s", prompt_file="p", scale=Scale(min=1, max=10))
    >>> parse_reply('{"score": 8}', spec)
    8
    >>> parse_reply('The answer is good. {"score": "9"}', spec)
    9
    >>> parse_reply('{"score": 11}', spec)
    Unparseable(reason='score 11 outside 1-10')
    >>> parse_reply('', spec)
    Unparseable(reason='empty reply')
    >>> parse_reply('{"score": "high"}', spec).reason.startswith('not the expected JSON')
    True
    >>> parse_reply('{"result": {"score": 3}}', spec).reason.startswith('not the expected JSON')
    True
    >>> parse_reply('{"score": true}', spec).reason
    'not the expected JSON: Value error, a boolean is not a score'
    """
    if not text or not text.strip():
        return Unparseable("empty reply")
    blob = first_json_object(text)
    if blob is None:
        return Unparseable("no JSON object in the reply")
    try:
        data = json.loads(blob)
        if spec.kind == "choice":
            winner = ChoiceReply.model_validate(data).winner.strip().upper()
            return winner if winner in spec.choices else Unparseable(
                f"winner {winner!r} not one of {sorted(spec.choices)}")
        score = ScoreReply.model_validate(data).score
    except json.JSONDecodeError as exc:
        return Unparseable(f"invalid JSON: {exc.msg}")
    except ValidationError as exc:
        return Unparseable(f"not the expected JSON: {exc.errors()[0]['msg']}")
    if not spec.scale.min <= score <= spec.scale.max:
        return Unparseable(f"score {score} outside {spec.scale.min}-{spec.scale.max}")
    return score


def expected_format(spec: JudgeSpec) -> str:
    if spec.kind == "choice":
        return '{"winner": "' + '" | "'.join(spec.choices) + '"}'
    return f'{{"score": <integer {spec.scale.min}-{spec.scale.max}>}}'


class TextJudge:
    """Judge by generated JSON with any `Generator` backend (vLLM on a GPU worker, transformers elsewhere) or a
    served model's chat endpoint (judge/served.py `ServedChat`)."""

    def __init__(self, generator, tokenizer, spec: JudgeSpec, *, max_new_tokens: int = JUDGE_REPLY_TOKENS,
                 max_prompt_tokens: int | None = None):
        from sftjudge.generate.backends import GenerationParams

        self.generator = generator
        self.tokenizer = tokenizer
        self.spec = spec
        self.params = GenerationParams(max_new_tokens=max_new_tokens)
        self.max_prompt_tokens = max_prompt_tokens  # None: send prompts whole (the server enforces its limit)

    def _fitted(self, item: dict[str, str]) -> tuple[dict[str, str], bool]:
        """The item with an over-long answer (then reference) cut in the middle, as for logprob judges."""
        if self.max_prompt_tokens is None:
            return item, False

        def prompt_tokens(it: dict[str, str]) -> int:
            prompt = self._prompt(self._with_format(self.spec.render_messages(it)))
            return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

        return fit_item(item, prompt_tokens, self.tokenizer, self.max_prompt_tokens)

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def score(self, items: list[dict[str, str]], batch_size: int = 8) -> list[Judgment]:
        """Judge every item; failed replies get one repair request, then count as unparseable."""
        fitted = [self._fitted(item) for item in items]
        conversations = [self._with_format(self.spec.render_messages(item)) for item, _ in fitted]
        replies = self._replies(conversations)
        parsed = [parse_reply(r, self.spec) for r in replies]
        retry = [i for i, p in enumerate(parsed) if isinstance(p, Unparseable)]
        if retry:
            repairs = [conversations[i] + [
                {"role": "assistant", "content": replies[i]},
                {"role": "user", "content": f"That reply could not be read ({parsed[i].reason}). Reply again "
                                            f"with only the JSON {expected_format(self.spec)}."}] for i in retry]
            for i, text in zip(retry, self._replies(repairs)):
                replies[i] = f"{replies[i]}\n--- repair ---\n{text}"
                parsed[i] = parse_reply(text, self.spec)
        judgments = [self._judgment(item["id"], p, r) for item, p, r in zip(items, parsed, replies)]
        for judgment, (_, cut) in zip(judgments, fitted):
            judgment.truncated = cut
        return judgments

    def _replies(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """The judge's reply to each conversation: a chat endpoint takes the messages, a local generator the
        prompt rendered with the judge's chat template."""
        if getattr(self.generator, "chat_messages", False):
            return self.generator.reply(conversations, self.params)
        return [g.text for g in self.generator.generate([self._prompt(c) for c in conversations], self.params)]

    def _with_format(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        last = dict(messages[-1])
        last["content"] += f"\n\nReply with only this JSON: {expected_format(self.spec)}"
        return messages[:-1] + [last]

    def _judgment(self, item_id: str, parsed, raw: str) -> Judgment:
        if isinstance(parsed, Unparseable):
            return Judgment(item_id, unparseable=parsed.reason, raw=raw)
        if self.spec.kind == "choice":
            return Judgment(item_id, choice=parsed, raw=raw)
        return Judgment(item_id, score=float(parsed), raw=raw)
