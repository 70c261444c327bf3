"""Batches for training and evaluation: length-grouped (little padding), right-padded, completion-only loss."""

from __future__ import annotations

import random

from sftjudge.models.chat import TokenizedExample
from sftjudge.runtime.device import autocast, device


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), batch order shuffled.

    >>> length_grouped_batches([5, 1, 4, 2], 2, random.Random(0)) in ([[1, 3], [2, 0]], [[2, 0], [1, 3]])
    True
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[TokenizedExample], pad_id: int):
    """Right-pad a batch into input_ids, attention_mask and labels tensors (-100 on padding)."""
    import torch

    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return ids, mask, labels


def summed_token_loss(model, ids, mask, labels, *, output_layer=None, extra=None):
    """(sum of token cross-entropies over target tokens, number of target tokens) for one batch.

    The output layer is applied only where a label is: with completion-only loss most positions are prompt
    or padding, and the full (positions x vocabulary) logits of a 49k-token vocabulary are a fifth of the
    model's compute and the largest activation it has. `output_layer` is the model's own (given when `model` is
    a wrapper such as DDP that does not expose it). A model sharded by FSDP applies it to every position in its
    own forward: sharded weights are only whole inside the wrapped forward. `extra`: further model inputs (packed
    rows: position_ids restarting at every row, with `mask` None).
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != -100
    extra = extra or {}
    if fsdp_sharded(model):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits[:, :-1, :][keep]
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())
    # logits_to_keep=1: the model skips its own full-sequence output layer; we apply it to target rows below.
    # use_cache=False: no key/value cache to build (and without one, packed rows' position_ids keep attention
    # within each row: transformers reads packing from them only when there is no cache and no mask).
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1, use_cache=False,
                **extra)
    hidden = out.hidden_states[-1][:, :-1, :]
    logits = (output_layer or model.get_output_embeddings())(hidden[keep])
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def fsdp_sharded(model) -> bool:
    """True for a model whose parameters FSDP sharded (FSDP1's wrapper or FSDP2's fully_shard class)."""
    return type(model).__name__.startswith("FSDP") or hasattr(model, "_fsdp_wrapped_module")


def mean_loss(model, examples: list[TokenizedExample], *, batch_size: int, pad_id: int, bf16: bool,
              desc: str = "eval") -> float:
    """Token-weighted mean completion loss over all `examples`, in eval mode (no dropout), no gradients."""
    import torch

    from sftjudge.runtime.progress import progress

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = length_grouped_batches([len(e.input_ids) for e in examples], batch_size, random.Random(0))
    with torch.no_grad():
        for batch in progress(batches, desc=desc, leave=False, unit="batch"):
            ids, mask, labels = (t.to(device()) for t in collate([examples[i] for i in batch], pad_id))
            with autocast(bf16):
                loss, n = summed_token_loss(model, ids, mask, labels)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)
