"""Logprob judging: the judge's next-token distribution over the score labels gives an expected score.

One forward pass per batch, nothing to parse and nothing to fail. Multi-token labels such as "10" (split into
"1","0" by Qwen-style tokenizers) are handled in the same pass by appending the shared first token and reading
the distribution after it (causal attention keeps the first read-out unaffected).
"""

from __future__ import annotations

from dataclasses import dataclass

from sftjudge.errors import JudgeError
from sftjudge.judge.fit import fit_item
from sftjudge.judge.prefix import PrefixStore, cut_points, forward_with_prefixes
from sftjudge.judge.spec import JudgeSpec, Judgment


@dataclass(frozen=True)
class LabelTokens:
    """Labels as token ids: `single[label] = id`, `double[label] = (first, second)` sharing one first id."""

    single: dict[str, int]
    double: dict[str, tuple[int, int]]

    @property
    def shared_first(self) -> int | None:
        firsts = {first for first, _ in self.double.values()}
        return next(iter(firsts)) if firsts else None


def label_tokens(tokenizer, labels: list[str]) -> LabelTokens:
    """Tokenise each label; raise JudgeError for tokenizers where one forward pass cannot read them."""
    single: dict[str, int] = {}
    double: dict[str, tuple[int, int]] = {}
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            single[label] = ids[0]
        elif len(ids) == 2:
            double[label] = (ids[0], ids[1])
        else:
            raise JudgeError(f"label {label!r} is {len(ids)} tokens for this judge tokenizer; use shorter labels")
    firsts = {first for first, _ in double.values()}
    if len(firsts) > 1 or (firsts and next(iter(firsts)) not in single.values()):
        raise JudgeError("two-token labels must share a first token that is itself a label (like '1','0')")
    if len(set(single.values())) < len(single):
        raise JudgeError(f"labels {labels} do not map to distinct tokens for this judge tokenizer")
    return LabelTokens(single, double)


def label_distribution(first_probs: list[float], second_probs: list[float] | None,
                       labels: LabelTokens) -> dict[str, float]:
    """Probability of each complete label from the two read-outs (unnormalised).

    >>> labels = LabelTokens(single={"1": 0, "2": 1}, double={"10": (0, 2)})
    >>> dist = label_distribution([0.5, 0.3, 0.2], [0.0, 0.0, 0.4], labels)
    >>> {k: round(v, 3) for k, v in dist.items()}
    {'1': 0.3, '2': 0.3, '10': 0.2}
    """
    dist: dict[str, float] = {}
    shared = labels.shared_first
    continue_mass = sum(second_probs[s] for _, s in labels.double.values()) if second_probs else 0.0
    for label, token in labels.single.items():
        p = first_probs[token]
        # "1" followed by "0" is the label 10, not the label 1.
        dist[label] = p * (1.0 - continue_mass) if token == shared else p
    for label, (first, second) in labels.double.items():
        dist[label] = first_probs[first] * (second_probs[second] if second_probs else 0.0)
    return dist


def judgment_from_distribution(item_id: str, dist: dict[str, float], spec: JudgeSpec, prompt_tokens: int,
                               truncated: bool) -> Judgment:
    """Turn label probabilities into a Judgment: an expected score, or the most probable choice.

    >>> from sftjudge.judge.spec import Scale
    >>> spec = JudgeSpec(name="s", prompt_file="p", scale=Scale(min=1, max=3))
    >>> j = judgment_from_distribution("x", {"1": 0.1, "2": 0.1, "3": 0.3}, spec, 5, False)
    >>> round(j.score, 2), round(j.label_mass, 2)
    (2.4, 0.5)
    """
    mass = sum(dist.values())
    normalised = {k: v / mass for k, v in dist.items()} if mass > 0 else dict(dist)
    judgment = Judgment(item_id, label_mass=mass, distribution=normalised, prompt_tokens=prompt_tokens,
                        truncated=truncated)
    if mass <= 0:
        judgment.unparseable = "no probability on any label (numerical underflow)"
    elif spec.kind == "choice":
        judgment.choice = max(normalised, key=normalised.get)
    else:
        judgment.score = sum(int(k) * p for k, p in normalised.items())
    return judgment


def unread_when_no_label(judgment: Judgment, labels: list[str], where: str) -> Judgment:
    """A judgment read from top tokens only (a served or in-engine judge): no label among `where` is unparseable,
    with that reason, never a score."""
    if not judgment.label_mass:
        judgment.unparseable = f"none of the labels {labels} among {where}: the judge wanted to say something else"
    return judgment


class LogprobJudge:
    """Scores items (dicts holding the judge's `inputs` fields) with a causal LM's score-label probabilities."""

    def __init__(self, model, tokenizer, spec: JudgeSpec, *, max_prompt_tokens: int = 1024,
                 prefixes: PrefixStore | None = None):
        self.model = model.eval() if model is not None else None  # None: prompts only (judge/engine.py)
        self.prefixes = prefixes  # None: every prompt computed whole
        self.tokenizer = tokenizer
        self.spec = spec
        self.labels = label_tokens(tokenizer, spec.labels)
        self.max_prompt_tokens = max_prompt_tokens

    def prompt_text(self, item: dict[str, str]) -> str:
        """The judge's whole prompt for one item, up to the answer prefix the score token follows."""
        messages = self.spec.render_messages(item)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.spec.answer_prefix

    def prompt_ids(self, item: dict[str, str]) -> list[int]:
        return self.tokenizer(self.prompt_text(item), add_special_tokens=False)["input_ids"]

    def encode(self, item: dict[str, str]) -> tuple[list[int], bool]:
        """Prompt ids within `max_prompt_tokens`, and whether anything had to be cut to get there.

        An over-long answer is cut in the middle (then the reference), never the question or the reference first
        (see judge/fit.py); only a question that alone is too long loses its beginning.
        """
        ids, cut, _ = self.encode_fitted(item)
        return ids, cut

    def encode_fitted(self, item: dict[str, str]) -> tuple[list[int], bool, tuple[int, ...]]:
        """As `encode`, plus where a reusable prefix of the ids may end (see judge/prefix.py)."""
        ids = self.prompt_ids(item)
        fitted, cut = item, False
        if len(ids) > self.max_prompt_tokens:
            fitted, _ = fit_item(item, lambda it: len(self.prompt_ids(it)), self.tokenizer, self.max_prompt_tokens)
            ids, cut = self.prompt_ids(fitted)[-self.max_prompt_tokens:], True
        cuts = cut_points(self.tokenizer, self.prompt_text, fitted, ids) if self.prefixes is not None else ()
        return ids, cut, cuts

    def score_batch(self, items: list[dict[str, str]]) -> list[Judgment]:
        """Score items (dicts with an id and the judge's input fields) in one forward pass."""
        import torch

        encoded = [self.encode_fitted(it) for it in items]
        shared = self.labels.shared_first
        seqs = [ids + ([shared] if shared is not None else []) for ids, _, _ in encoded]
        offset = 2 if shared is not None else 1
        # Only the last one or two positions are read. Without a prefix store every prompt is computed whole
        # (left-padded, positions counting real tokens only).
        logits = forward_with_prefixes(self.model, self.prefixes or PrefixStore(0), seqs,
                                       [p for _, _, p in encoded], keep=offset)[0]
        first = torch.softmax(logits[:, -offset, :], dim=-1).tolist()
        second = torch.softmax(logits[:, -1, :], dim=-1).tolist() if shared is not None else [None] * len(items)
        return [judgment_from_distribution(item["id"], label_distribution(p1, p2, self.labels), self.spec,
                                           len(prompt_ids), truncated)
                for item, (prompt_ids, truncated, _), p1, p2 in zip(items, encoded, first, second)]

    def score(self, items: list[dict[str, str]], batch_size: int = 4) -> list[Judgment]:
        from sftjudge.runtime.progress import progress

        # Similar lengths together: less padding per forward pass.
        order = sorted(range(len(items)), key=lambda i: sum(len(items[i][k]) for k in self.spec.inputs))
        results: dict[int, Judgment] = {}
        bar = progress(total=len(items), desc="judge", unit="item")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            for i, judgment in zip(idx, self.score_batch([items[i] for i in idx])):
                results[i] = judgment
            bar.update(len(idx))
        bar.close()
        return [results[i] for i in range(len(items))]
