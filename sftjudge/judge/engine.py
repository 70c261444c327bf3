"""Logprob judging inside a vLLM engine (`judge.backend: vllm`): the same prompts as in process, scored by the engine
that a GPU worker already runs, with no transformers copy of the judge beside it.

Each item's prompt is encoded exactly as LogprobJudge encodes it (chat template, answer prefix, an over-long answer
cut in the middle) and sent as token ids. The engine generates up to two tokens greedily and returns the top
`top_logprobs` log-probabilities at each position; a label's probability is read from them by token id. A two-token
label such as "10" is P("1") x P("0" after "1"): from the engine's second position when it chose "1", else from a
second request that appends "1" (vLLM's prefix cache computes the shared prompt once). A label outside the top
tokens counts 0, so the label mass is a lower bound, exactly as over an OpenAI-compatible server
(judge/served.py); the health gate refuses a judge whose labels fall outside (judge.health.min_label_mass).
A rubric sends one request per criterion, each ending in that criterion's opening ("Accuracy: ").
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sftjudge.judge.logprob import (
    LogprobJudge,
    judgment_from_distribution,
    label_distribution,
    unread_when_no_label,
)
from sftjudge.judge.rubric import combine_dimensions
from sftjudge.judge.spec import JudgeSpec, Judgment


def _probabilities(position: dict[int, Any] | None) -> defaultdict[int, float]:
    """{token id: probability} of one generated position's returned log-probabilities (absent ids read 0)."""
    out: defaultdict[int, float] = defaultdict(float)
    for token, entry in (position or {}).items():
        out[int(token)] = math.exp(float(getattr(entry, "logprob", entry)))
    return out


class EngineLogprobJudge:
    """Scores items with a vLLM engine's label probabilities; same interface as LogprobJudge."""

    def __init__(self, llm, tokenizer, spec: JudgeSpec, *, max_prompt_tokens: int = 1024, top_logprobs: int = 20):
        self.llm, self.spec, self.top_logprobs = llm, spec, top_logprobs
        self.encoder = LogprobJudge(None, tokenizer, spec, max_prompt_tokens=max_prompt_tokens)  # prompts only
        self.labels = self.encoder.labels

    @property
    def max_prompt_tokens(self) -> int:
        return self.encoder.max_prompt_tokens

    def _ask(self, prompts: list[list[int]], max_tokens: int) -> list[Any]:
        from vllm import SamplingParams

        sampling = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=self.top_logprobs)
        return self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], sampling, use_tqdm=False)

    def read(self, prompts: list[list[int]]) -> list[dict[str, float]]:
        """Each prompt's label probabilities (unnormalised), two engine calls at most for the whole list."""
        head = self.labels.shared_first
        outputs = self._ask(prompts, 2 if head is not None else 1)
        firsts, seconds = [], []
        for out in outputs:
            positions = out.outputs[0].logprobs or []
            first = _probabilities(positions[0] if positions else None)
            chose_head = head is not None and list(out.outputs[0].token_ids[:1]) == [head]
            firsts.append(first)
            seconds.append(_probabilities(positions[1]) if chose_head and len(positions) > 1 else None)
        again = [i for i, (first, second) in enumerate(zip(firsts, seconds))
                 if head is not None and second is None and first[head] > 0]
        if again:
            for i, out in zip(again, self._ask([prompts[i] + [head] for i in again], 1)):
                seconds[i] = _probabilities((out.outputs[0].logprobs or [None])[0])
        return [label_distribution(first, second if head is not None else None, self.labels)
                for first, second in zip(firsts, seconds)]

    def judgment(self, item_id: str, dist: dict[str, float], tokens: int, cut: bool) -> Judgment:
        return unread_when_no_label(judgment_from_distribution(item_id, dist, self.spec, tokens, cut),
                                    self.spec.labels, f"the engine's top {self.top_logprobs} tokens")

    def score(self, items: list[dict[str, str]], batch_size: int = 4) -> list[Judgment]:
        """All items in one engine call (the engine batches them itself); `batch_size` is not needed here."""
        encoded = [self.encoder.encode(item) for item in items]
        dists = self.read([ids for ids, _ in encoded])
        return [self.judgment(item["id"], dist, len(ids), cut)
                for item, (ids, cut), dist in zip(items, encoded, dists)]


class EngineRubricJudge(EngineLogprobJudge):
    """Per-dimension scores in a vLLM engine: the prompt plus each criterion's opening, one request each."""

    def __init__(self, llm, tokenizer, spec: JudgeSpec, **kwargs: Any):
        super().__init__(llm, tokenizer, spec, **kwargs)
        self.suffixes = {name: tokenizer(f"{opening}: ", add_special_tokens=False)["input_ids"]
                         for name, opening in spec.criteria.items()}

    def score(self, items: list[dict[str, str]], batch_size: int = 4) -> list[Judgment]:
        encoded = [self.encoder.encode(item) for item in items]
        names = list(self.suffixes)
        dists = self.read([ids + self.suffixes[name] for ids, _ in encoded for name in names])
        out = []
        for i, (item, (ids, cut)) in enumerate(zip(items, encoded)):
            per = {name: self.judgment(item["id"], dists[i * len(names) + c], len(ids), cut)
                   for c, name in enumerate(names)}
            out.append(combine_dimensions(item["id"], per, len(ids), cut))
        return out
