"""Per-dimension scores (accuracy, completeness, format, clarity and tone) from one pass over the shared prompt.

A rubric judge's prompt asks for one line per dimension. The prompt - system text, question, reference, answer,
up to the opening of the judge's turn - is the same for every dimension, so it is run once per item; its keys and
values are then reused for each dimension's short suffix ("Accuracy: "), whose next-token probabilities over the
score labels give that dimension's expected score. The item's overall score is the mean over dimensions.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from sftjudge.judge.logprob import (
    LogprobJudge,
    judgment_from_distribution,
    label_distribution,
)
from sftjudge.judge.prefix import PrefixStore, cache_argument, forward_with_prefixes
from sftjudge.judge.spec import JudgeSpec, Judgment
from sftjudge.runtime.device import device


class RubricJudge:
    """Scores items on every criterion of a rubric judge definition, with the shared prefix computed once."""

    def __init__(self, model, tokenizer, spec: JudgeSpec, *, max_prompt_tokens: int = 1024,
                 prefixes: PrefixStore | None = None):
        self.prompt = LogprobJudge(model, tokenizer, spec, max_prompt_tokens=max_prompt_tokens, prefixes=prefixes)
        self.spec = spec
        shared = self.prompt.labels.shared_first
        # Each suffix ends with the shared first token of two-token labels ("1" of "10"), as in LogprobJudge.
        self.suffixes = {name: tokenizer(f"{opening}: ", add_special_tokens=False)["input_ids"]
                         + ([shared] if shared is not None else [])
                         for name, opening in spec.criteria.items()}

    @property
    def max_prompt_tokens(self) -> int:
        return self.prompt.max_prompt_tokens

    def score_batch(self, items: list[dict[str, str]]) -> list[Judgment]:
        """One forward pass over the items' prompts, one over every (item, criterion) suffix on the cached prefix."""
        import torch

        judge = self.prompt
        encoded = [judge.encode_fitted(it) for it in items]
        pad = judge.tokenizer.pad_token_id if judge.tokenizer.pad_token_id is not None else 0
        # The prompt up to the judge's turn, its question-and-reference opening reused across answers when a
        # prefix store is given; its keys and values are kept for the criteria's suffixes.
        _, cache, mask, real = forward_with_prefixes(judge.model, judge.prefixes or PrefixStore(0),
                                                     [ids for ids, _, _ in encoded], [p for _, _, p in encoded],
                                                     keep=1, keep_cache=True)
        names = list(self.suffixes)
        cache_arg = cache_argument(judge.model)
        cache.batch_repeat_interleave(len(names))  # row i*C + c: item i, criterion c
        longest = max(len(s) for s in self.suffixes.values())
        rows = [self.suffixes[n] + [pad] * (longest - len(self.suffixes[n])) for _ in items for n in names]
        suffix_mask = [[1] * len(self.suffixes[n]) + [0] * (longest - len(self.suffixes[n])) for _ in items
                       for n in names]
        lengths = torch.tensor(real, device=device()).repeat_interleave(len(names))
        positions = lengths[:, None] + torch.arange(longest, device=device())[None, :]
        full_mask = torch.cat([mask.repeat_interleave(len(names), dim=0),
                               torch.tensor(suffix_mask, device=device())], dim=1)
        with torch.no_grad():
            logits = judge.model(input_ids=torch.tensor(rows, device=device()), attention_mask=full_mask,
                                 position_ids=positions, use_cache=True, **{cache_arg: cache}).logits.float()
        return [self._judgment(item, prompt_ids, truncated, logits[i * len(names):(i + 1) * len(names)], names)
                for i, (item, (prompt_ids, truncated, _)) in enumerate(zip(items, encoded))]

    def _judgment(self, item, prompt_ids, truncated, logits, names) -> Judgment:
        import torch

        shared = self.prompt.labels.shared_first is not None
        per_criterion = {}
        for row, name in zip(logits, names):
            end = len(self.suffixes[name])  # read-outs sit at the suffix's last one or two real positions
            first = torch.softmax(row[end - (2 if shared else 1)], dim=-1).tolist()
            second = torch.softmax(row[end - 1], dim=-1).tolist() if shared else None
            per_criterion[name] = judgment_from_distribution(
                item["id"], label_distribution(first, second, self.prompt.labels), self.spec, len(prompt_ids),
                truncated)
        return combine_dimensions(item["id"], per_criterion, len(prompt_ids), truncated)

    def score(self, items: list[dict[str, str]], batch_size: int = 4) -> list[Judgment]:
        from sftjudge.runtime.progress import progress

        order = sorted(range(len(items)), key=lambda i: sum(len(items[i][k]) for k in self.spec.inputs))
        results: dict[int, Judgment] = {}
        with progress(total=len(items), desc="judge rubric", unit="item") as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                for i, judgment in zip(idx, self.score_batch([items[i] for i in idx])):
                    results[i] = judgment
                bar.update(len(idx))
        return [results[i] for i in range(len(items))]


def combine_dimensions(item_id: str, per_criterion: dict[str, Judgment], prompt_tokens: int,
                       truncated: bool) -> Judgment:
    """One item's rubric judgment from its per-criterion judgments: the dimensions, their mean as the score (only
    when every dimension was read) and the mean label mass."""
    dims = {name: one.score for name, one in per_criterion.items() if one.score is not None}
    masses = [one.label_mass or 0.0 for one in per_criterion.values()]
    judgment = Judgment(item_id, prompt_tokens=prompt_tokens, truncated=truncated, dimensions=dims,
                        label_mass=sum(masses) / len(masses) if masses else None)
    if len(dims) == len(per_criterion):
        judgment.score = sum(dims.values()) / len(dims)
    else:
        judgment.unparseable = "no probability on any label for " + ", ".join(
            n for n in per_criterion if n not in dims)
    return judgment


def dimension_means(per_item: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean score per dimension over the items that have one.

    >>> dimension_means([{"accuracy": 8.0, "format": 4.0}, {"accuracy": 6.0, "format": 5.0}, {}])
    {'accuracy': 7.0, 'format': 4.5}
    """
    values: dict[str, list[float]] = {}
    for dims in per_item:
        for name, score in dims.items():
            values.setdefault(name, []).append(score)
    return {name: round(statistics.fmean(scores), 4) for name, scores in values.items()}
