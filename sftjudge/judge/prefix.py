"""Shared-prefix reuse: a judge prompt's opening (system text, question, reference) is run once per test item and
its keys and values are reused for every candidate judged against it.

In one judge stage the same item is judged with this run's answer, the base model's, the reference itself and an
empty answer (the anchors), the champion's (noise); in pairwise, both answer orders open alike up to the first
answer. Everything before the first candidate field is the same token sequence every time, so its key/value cache
is kept in a `PrefixStore` (least recently used first out, within a memory budget) and only the rest of each
prompt - the answer and the rating instruction - is computed. A prefix is keyed by its exact token ids, so a reused
prefix is always the very same tokens at the very same positions: the scores equal the unshared ones up to
floating-point rounding (within 1e-4 at fp32; bf16 rounds more, like any change of batch composition).

A second, longer cut follows the answer: pointwise and rubric judges word their prompts alike through the candidate
answer, so once an answer has been judged pointwise its keys and values up to the answer's end are kept too, and
the rubric of the same answer computes only its own instruction and the dimensions' suffixes. A prompt may thus
have several cut points; the longest one already in the store is used.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from sftjudge.judge.fit import SHRINK_ORDER
from sftjudge.runtime.device import device

PAD = 0  # the id written into padded positions; they are masked out, so any valid id would do
_SENTINEL = "\ue000"  # a private-use character: marks where the first candidate field starts in the rendered text


def prefix_length(tokenizer, text_of, item: dict[str, str], ids: list[int], fields: tuple[str, ...]) -> int:
    """How many of `ids` (the item's whole prompt) come before its first candidate field, whatever the answer.

    `text_of(item)` renders the prompt text. The text before the first candidate field is rendered with the
    fields replaced by a marker, tokenised on its own, and only the tokens it shares with `ids` count: a token
    that the answer's first characters could merge with is never part of a prefix.
    """
    present = [f for f in fields if f in item]
    if not present:
        return 0
    marked = text_of(item | {f: _SENTINEL for f in present})
    cut = marked.find(_SENTINEL)
    if cut <= 0:
        return 0
    return _tokens_shared(tokenizer, marked[:cut], ids)


def answered_length(tokenizer, text_of, item: dict[str, str], ids: list[int], fields: tuple[str, ...]) -> int:
    """How many of `ids` come before the end of the last candidate field: the part of the prompt that another
    judge definition worded alike through the answer shares with this one. As in `prefix_length`, only tokens
    that the text after the answer cannot merge with count. 0 for a prompt with two answers (pairwise): nothing
    else is worded like it past the first answer."""
    present = [f for f in fields if f in item]
    if len(present) != 1:
        return 0
    marked = text_of(item | {present[0]: item[present[0]] + _SENTINEL})
    return _tokens_shared(tokenizer, marked[:marked.find(_SENTINEL)], ids)


def _tokens_shared(tokenizer, head: str, ids: list[int]) -> int:
    """How many leading tokens of `head`, tokenised on its own, equal those of `ids`; at least one token of `ids`
    stays after them."""
    shared = 0
    for a, b in zip(tokenizer(head, add_special_tokens=False)["input_ids"], ids):
        if a != b:
            break
        shared += 1
    return min(shared, len(ids) - 1)


def cut_points(tokenizer, text_of, item: dict[str, str], ids: list[int]) -> tuple[int, ...]:
    """The positions of `ids` where a stored prefix may end, shortest first: after the opening (the same for any
    answer) and after the answer (the same for any judge worded alike up to there). Empty when nothing is shared.
    """
    opening = prefix_length(tokenizer, text_of, item, ids, CANDIDATE_FIELDS)
    if opening <= 0:
        return ()
    answered = answered_length(tokenizer, text_of, item, ids, CANDIDATE_FIELDS)
    return (opening, answered) if answered > opening else (opening,)


CANDIDATE_FIELDS = SHRINK_ORDER[0]


class PrefixStore:
    """Key/value caches of prompt prefixes by their token ids; least recently used evicted beyond `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[int, ...]) -> list[tuple[Any, Any]] | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: tuple[int, ...], layers: list[tuple[Any, Any]]) -> None:
        size = _nbytes(layers)
        if size > self.budget or key in self.entries:
            return
        while self.used + size > self.budget and self.entries:
            _, dropped = self.entries.popitem(last=False)
            self.used -= _nbytes(dropped)
        self.entries[key] = layers
        self.used += size


def _nbytes(layers: list[tuple[Any, Any]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def _left_padded(seqs: list[list[int]]):
    """(ids, mask) tensors of `seqs` padded on the left to one width; padding is PAD and masked out."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([[PAD] * (width - len(s)) + list(s) for s in seqs], device=device())
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device())
    return ids, mask


def cache_argument(model) -> str:
    """transformers 5 names the key/value cache `cache` (argument and output); older versions past_key_values."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def forward_with_prefixes(model, store: PrefixStore, seqs: list[list[int]], cuts: list[tuple[int, ...]], *,
                          keep: int, keep_cache: bool = False):
    """Run `seqs` through `model`, reusing the key/value cache of the longest prefix of each seq that is stored
    (its cut points `cuts[i]`, shortest first, say where one may end), computing and storing the shortest (the
    opening) when none is, and storing the longer ones for later calls. Padding is masked out, so its token id
    (PAD) never matters. Returns (logits of the last `keep` positions [batch, keep, vocab], the key/value cache of
    the whole sequences or None, the attention mask over it, each row's real length)."""
    import torch

    arg = cache_argument(model)
    if not any(cuts):  # nothing shared: plain left-padded pass
        return _plain(model, seqs, keep=keep, keep_cache=keep_cache, arg=arg)
    prefix_lens = [_longest_stored(store, s, c) for s, c in zip(seqs, cuts)]
    openings = [tuple(s[:c[0]]) if c and not p else None for s, c, p in zip(seqs, cuts, prefix_lens)]
    rows_per_opening = Counter(o for o in openings if o)
    # An opening two rows of this batch share is computed once, in a pass of its own; an opening only one row
    # needs is computed within that row's pass (a separate pass would cost more than it saves) and stored from it.
    shared = [o for o in rows_per_opening if rows_per_opening[o] > 1]
    store.misses += len(rows_per_opening)  # openings computed; every other row with a cut point reused one
    store.hits += sum(1 for c in cuts if c) - len(rows_per_opening)
    fresh = _compute_openings(model, store, shared, arg)
    prefix_lens = [p or (len(o) if o in fresh else 0) for p, o in zip(prefix_lens, openings)]
    cached = [(fresh.get(tuple(s[:p])) or store.get(tuple(s[:p]))) if p else None for s, p in zip(seqs, prefix_lens)]
    later = [[c for c in cut if c > p] for cut, p in zip(cuts, prefix_lens)]  # cuts to store after this pass
    width = max(prefix_lens)
    cache = _stacked(cached, prefix_lens, width, model.config) if width else None
    tails = [s[p:] for s, p in zip(seqs, prefix_lens)]
    tail_ids, tail_mask = _left_padded(tails)
    head_mask = torch.tensor([[0] * (width - p) + [1] * p for p in prefix_lens], dtype=torch.long, device=device())
    positions = torch.tensor(prefix_lens, device=device())[:, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([head_mask, tail_mask], dim=1)
    store_later = any(later)
    with torch.no_grad():
        out = model(input_ids=tail_ids, attention_mask=mask, position_ids=positions,
                    use_cache=keep_cache or store_later, **keep_logits(model, keep),
                    **({arg: cache} if cache is not None else {}))
    if store_later:
        _store_longer(store, getattr(out, arg), seqs, list(zip(prefix_lens, later)), (width, tail_ids.shape[1]))
    return out.logits[:, -keep:, :].float(), (getattr(out, arg) if keep_cache else None), mask, \
        [len(s) for s in seqs]


def _stacked(cached: list, prefix_lens: list[int], width: int, config):
    """One key/value cache of the rows' stored prefixes, each right-aligned in `width` columns (padding masked);
    an empty one for a row without a stored prefix."""
    import torch
    from transformers import DynamicCache

    template = next(c for c in cached if c is not None)
    stacked = []
    for layer, (k0, v0) in enumerate(template):
        ks, vs = [], []
        for entry, length in zip(cached, prefix_lens):
            k = entry[layer][0] if entry is not None else k0[:, :, :0]
            v = entry[layer][1] if entry is not None else v0[:, :, :0]
            gap = width - length
            ks.append(torch.nn.functional.pad(k, (0, 0, gap, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, gap, 0)))
        stacked.append((torch.cat(ks), torch.cat(vs)))
    return DynamicCache(ddp_cache_data=stacked, config=config)


def _longest_stored(store: PrefixStore, seq: list[int], cuts: tuple[int, ...]) -> int:
    """The longest of `cuts` whose prefix of `seq` is in the store; 0 when none is."""
    return next((c for c in reversed(cuts) if store.get(tuple(seq[:c])) is not None), 0)


def _compute_openings(model, store: PrefixStore, openings: list[tuple[int, ...]], arg: str):
    """Run the missing openings in one left-padded pass; store each row's keys and values; return them by key."""
    import torch

    fresh: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
    if not openings:
        return fresh
    width = max(len(k) for k in openings)
    ids, mask = _left_padded(openings)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, **keep_logits(model, 1))
    layers = [(layer[0], layer[1]) for layer in getattr(out, arg)]
    for row, key in enumerate(openings):
        fresh[key] = [(k[row:row + 1, :, width - len(key):].clone(), v[row:row + 1, :, width - len(key):].clone())
                      for k, v in layers]
        store.put(key, fresh[key])
    return fresh


def _store_longer(store: PrefixStore, cache, seqs, rows: list[tuple[int, list[int]]],
                  widths: tuple[int, int]) -> None:
    """Store each row's keys and values up to its longer cut points (`rows[i]`: its prefix length, the cuts), cut
    out of the pass's cache: the row's prefix part (right-aligned in the first `widths[0]` columns) joined to the
    start of its tail part (right-aligned in the last `widths[1]`)."""
    import torch

    width, tail_width = widths
    layers = [(layer[0], layer[1]) for layer in cache]
    for row, (seq, (p, cuts)) in enumerate(zip(seqs, rows)):
        start = width + tail_width - (len(seq) - p)  # where the row's tail begins
        for cut in cuts:
            key = tuple(seq[:cut])
            if store.get(key) is not None:
                continue
            def joined(t):  # the row's prefix columns, then the first cut - p columns of its tail
                return torch.cat([t[row:row + 1, :, width - p:width], t[row:row + 1, :, start:start + cut - p]],
                                 dim=2)

            store.put(key, [(joined(k), joined(v)) for k, v in layers])


def _plain(model, seqs: list[list[int]], *, keep: int, keep_cache: bool, arg: str):
    import torch

    ids, mask = _left_padded(seqs)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=keep_cache, **keep_logits(model, keep))
    return out.logits[:, -keep:, :].float(), (getattr(out, arg) if keep_cache else None), mask, \
        [len(s) for s in seqs]


def keep_logits(model, positions: int) -> dict[str, int]:
    """Project only the last positions onto the vocabulary where the model can (~15% less compute at 150k)."""
    import inspect

    return {"logits_to_keep": positions} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
