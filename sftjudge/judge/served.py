"""Judging through an OpenAI-compatible server (`judge.backend: openai`): the same judge definitions, served.

Logprob judges read the score labels' probabilities from the first generated token's `top_logprobs`. The judge's
answer prefix ("Score: ") is sent as a started assistant message that the server continues (vLLM and SGLang:
`continue_final_message`), so the served judge sees the same prompt as the in-process one. A two-character label
such as "10" is read as P("1") x P("0" after "1"), the second factor from the sampled second token when the server
chose "1", else from a second request that continues "Score: 1". Text judges reply in JSON through chat and are
validated exactly as in-process. A label outside the returned top tokens counts 0, so the label mass is a lower
bound and a judge whose labels fall outside is refused by the health gate (judge.health.min_label_mass). Prompts
are fitted (answer cut in the middle, never the question or reference) with the tokenizer of `judge.model`, an
approximation when the served model tokenizes differently.
"""

from __future__ import annotations

import math
from typing import Any

from sftjudge.errors import JudgeError
from sftjudge.judge.fit import fit_item
from sftjudge.judge.logprob import judgment_from_distribution, unread_when_no_label
from sftjudge.judge.rubric import combine_dimensions
from sftjudge.judge.spec import MASS_SLACK, JudgeSpec, Judgment
from sftjudge.runtime.served_client import ServedClient

# Below this probability of the first character of "10", the second request is not worth its round trip: it could
# move the expected score by at most 10 x this.
MIN_HEAD_PROBABILITY = 1e-3
# A server's float rounding: log-probabilities a hair above 0 are still sane (and a mass a hair above 1: spec).
LOGPROB_SLACK = 1e-4


def _merged(top: list[dict[str, Any]], strip: bool) -> dict[str, float]:
    """{token text: probability} from one position's top_logprobs; with `strip`, "8" and " 8" are one label.

    After a sent answer prefix ("Score: ") only the exact label token counts, as in process; at the start of a
    reply (no prefill) the same digit with or without a leading space is the same answer.
    """
    probs: dict[str, float] = {}
    for entry in top:
        key = str(entry.get("token", ""))
        logprob = float(entry["logprob"])
        if not math.isfinite(logprob) or logprob > LOGPROB_SLACK:
            raise JudgeError(f"the judge server returned the log-probability {logprob!r} for the token {key!r}: a "
                             f"log-probability is finite and at most 0, so the server is broken; nothing of this "
                             f"reply was scored or kept")
        key = key.strip() if strip else key
        probs[key] = probs.get(key, 0.0) + math.exp(logprob)
    if sum(probs.values()) > 1 + MASS_SLACK:
        raise JudgeError(f"the judge server's top tokens have probabilities summing to {sum(probs.values()):.4g}, "
                         f"more than 1: the server is broken; nothing of this reply was scored or kept")
    return probs


def served_distribution(first: dict[str, float], after_head: dict[str, float] | None,
                        labels: list[str]) -> dict[str, float]:
    """Each label's probability from the first position's top tokens and, for two-character labels, the
    distribution after their first character (`after_head`); labels outside the top tokens count 0.

    >>> dist = served_distribution({"1": 0.5, "8": 0.3}, {"0": 0.6}, ["1", "8", "9", "10"])
    >>> {k: round(v, 3) for k, v in dist.items()}
    {'1': 0.2, '8': 0.3, '9': 0.0, '10': 0.3}
    >>> served_distribution({"10": 0.4, "9": 0.5}, None, ["9", "10"])  # a vocabulary with "10" as one token
    {'9': 0.5, '10': 0.4}
    """
    dist = {label: first.get(label, 0.0) for label in labels}
    for label in labels:
        if len(label) > 1 and after_head is not None:
            carried = first.get(label[0], 0.0) * after_head.get(label[1:], 0.0)
            dist[label] += carried
            if label[0] in dist:  # "1" followed by "0" is the label 10, not the label 1
                dist[label[0]] = max(0.0, dist[label[0]] - carried)
    return dist


def _positions(reply: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """Each generated position ({token, logprob, top_logprobs}), or a JudgeError saying the server gave none."""
    choices = reply.get("choices") or [{}]
    content = (choices[0].get("logprobs") or {}).get("content")
    if not content or not content[0].get("top_logprobs"):
        raise JudgeError(f"judge server {url} returned no top_logprobs: a logprob judge needs a server that "
                         f"returns them (vLLM: start it with --max-logprobs 20 or more); otherwise set judge.mode: "
                         f"text")
    return [{"token": p.get("token", ""), "top_logprobs": p.get("top_logprobs") or []} for p in content]


class ServedLogprobJudge:
    """Scores items with a served model's label probabilities; same interface as LogprobJudge."""

    def __init__(self, client: ServedClient, tokenizer, spec: JudgeSpec, *, max_prompt_tokens: int | None = 1024,
                 prefill: bool = True, top_logprobs: int = 20):
        self.client, self.tokenizer, self.spec = client, tokenizer, spec
        self.max_prompt_tokens, self.prefill, self.top_logprobs = max_prompt_tokens, prefill, top_logprobs
        heads = {label[0] for label in spec.labels if len(label) > 1}
        if len(heads) > 1:
            raise JudgeError(f"judge {spec.name}: two-character labels must share their first character "
                             f"(like '10' after '1') to be read from a served model")
        self.head = next(iter(heads)) if heads else None

    def fitted(self, item: dict[str, str]) -> tuple[list[dict[str, str]], int, bool]:
        """The judge chat for `item` with over-long answers cut in the middle, its length in tokens, whether cut."""
        def count(it: dict[str, str]) -> int:
            text = self.tokenizer.apply_chat_template(self.spec.render_messages(it), tokenize=False,
                                                      add_generation_prompt=True)
            return len(self.tokenizer(text + self.spec.answer_prefix, add_special_tokens=False)["input_ids"])

        cut = False
        if self.max_prompt_tokens is not None:
            item, cut = fit_item(item, count, self.tokenizer, self.max_prompt_tokens)
        return self.spec.render_messages(item), count(item), cut

    def read(self, messages: list[dict[str, str]], prefix: str) -> dict[str, float]:
        """Label probabilities after `messages` and the started judge turn `prefix`."""
        positions = self._ask(messages, prefix, max_tokens=2 if self.head else 1)
        first = _merged(positions[0]["top_logprobs"], strip=not self.prefill)
        after_head = None
        if self.head is not None and first.get(self.head, 0.0) >= MIN_HEAD_PROBABILITY:
            if len(positions) > 1 and str(positions[0].get("token", "")).strip() == self.head:
                after_head = _merged(positions[1]["top_logprobs"], strip=False)  # the server chose "1": next
                # position
            elif self.prefill:
                after_head = _merged(self._ask(messages, prefix + self.head, max_tokens=1)[0]["top_logprobs"],
                                     strip=False)
        return served_distribution(first, after_head, self.spec.labels)

    def _ask(self, messages: list[dict[str, str]], prefix: str, *, max_tokens: int) -> list[dict[str, Any]]:
        options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0, "logprobs": True,
                                   "top_logprobs": self.top_logprobs}
        if self.prefill and prefix:
            messages = messages + [{"role": "assistant", "content": prefix}]
            options |= {"continue_final_message": True, "add_generation_prompt": False}
        return _positions(self.client.chat(messages, **options), self.client.base_url)

    def judge_one(self, item: dict[str, str]) -> Judgment:
        messages, tokens, cut = self.fitted(item)
        return self.judgment(item["id"], self.read(messages, self.spec.answer_prefix), tokens, cut)

    def judgment(self, item_id: str, dist: dict[str, float], tokens: int, cut: bool) -> Judgment:
        return unread_when_no_label(judgment_from_distribution(item_id, dist, self.spec, tokens, cut),
                                    self.spec.labels, f"the server's top {self.top_logprobs} tokens")

    def score(self, items: list[dict[str, str]], batch_size: int = 4) -> list[Judgment]:
        return _scored(self.client, self.judge_one, items, f"judge {self.spec.name} (served)")


class ServedRubricJudge(ServedLogprobJudge):
    """Per-dimension scores from a served model: one request per criterion, each continuing "<Dimension>: "
    (a server with prefix caching, like vLLM's, computes the shared prompt once)."""

    def __init__(self, client: ServedClient, tokenizer, spec: JudgeSpec, **kwargs: Any):
        super().__init__(client, tokenizer, spec, **kwargs)
        if not self.prefill:
            raise JudgeError(f"judge {spec.name} is a rubric: over judge.backend=openai it needs a server that "
                             f"continues a started reply (judge.openai.prefill: true)")

    def judge_one(self, item: dict[str, str]) -> Judgment:
        messages, tokens, cut = self.fitted(item)
        per_criterion = {name: self.judgment(item["id"], self.read(messages, f"{opening}: "), tokens, cut)
                         for name, opening in self.spec.criteria.items()}
        return combine_dimensions(item["id"], per_criterion, tokens, cut)


class ServedChat:
    """A text judge's replies from a served model's chat endpoint (see TextJudge: `chat_messages`)."""

    chat_messages = True

    def __init__(self, client: ServedClient):
        self.client = client

    def reply(self, conversations: list[list[dict[str, str]]], params) -> list[str]:
        def one(messages: list[dict[str, str]]) -> str:
            answer = self.client.chat(messages, max_tokens=params.max_new_tokens, temperature=0)
            choices = answer.get("choices") or [{}]
            return str((choices[0].get("message") or {}).get("content") or "")

        return self.client.map(one, conversations)

    def close(self) -> None:
        self.client.close()


def _scored(client: ServedClient, judge_one, items: list[dict[str, str]], desc: str) -> list[Judgment]:
    from sftjudge.runtime.progress import progress

    with progress(total=len(items), desc=desc, unit="item") as bar:
        def work(item: dict[str, str]) -> Judgment:
            judgment = judge_one(item)
            bar.update(1)
            return judgment

        return client.map(work, items)
