"""Contamination check: which eval rows share most of their word n-grams with a reference (training) set.

An eval row whose normalised text is largely made of 13-word sequences that also occur in the reference
rows was probably copied from them, and scoring a model on it measures memory, not skill. N-grams are
hashed to 64-bit ints (`sftjudge.dedup.batch_ngram_hashes`, deterministic across processes) and kept in
one dict, so a check over tens of thousands of rows costs one pass over each side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from sftjudge.curate.dedup import batch_ngram_hashes, word_ngram_hashes
from sftjudge.curate.rows import Example
from sftjudge.curate.steps import Dropped, StepResult, normalized_text

# Texts hashed per call: bounds the temporary arrays while keeping numpy calls large.
_BATCH_TEXTS = 4096


def _ngram_sets(texts: list[str], n: int):
    """Yield each text's distinct n-gram hashes as a Python set, hashing texts in batches."""
    for lo in range(0, len(texts), _BATCH_TEXTS):
        hashes, starts = batch_ngram_hashes(texts[lo:lo + _BATCH_TEXTS], n)
        values = hashes.tolist()
        bounds = starts.tolist() + [len(values)]
        for begin, end in zip(bounds[:-1], bounds[1:]):
            yield set(values[begin:end])


def reference_ngram_index(texts: list[str], n: int = 13) -> dict[int, int]:
    """Map every word n-gram hash in the reference texts to the index of the first text containing it.

    Texts should be normalised the same way as the eval texts (`normalized_text` for rows). The dict also
    serves as the reference set for `overlap_fraction`. Raises ValueError if n < 1.

    >>> index = reference_ngram_index(["a b c d", "b c d e"], n=3)
    >>> len(index), sorted(set(index.values()))
    (3, [0, 1])
    """
    index: dict[int, int] = {}
    # Walking the texts backwards and overwriting leaves each gram mapped to its earliest text,
    # while dict.update over zip(...) stays in C instead of a Python-level loop per gram.
    sets = list(_ngram_sets(texts, n))
    for position in range(len(sets) - 1, -1, -1):
        index.update(zip(sets[position], repeat(position)))
    return index


def overlap_fraction(eval_text: str, reference_ngrams: Container[int], n: int = 13) -> float:
    """Share (0.0-1.0) of the eval text's distinct word n-grams that occur in `reference_ngrams`.

    `reference_ngrams` is any container of n-gram hashes (a set, or `reference_ngram_index`'s dict) built
    with the same n from text normalised the same way. A text with fewer than n words counts as one gram.
    Raises ValueError if n < 1.

    >>> reference = reference_ngram_index(["the cat sat on the mat today"], n=3)
    >>> overlap_fraction("the cat sat on the mat", reference, n=3)
    1.0
    >>> overlap_fraction("a dog sat on the mat", reference, n=3)
    0.5
    """
    grams = set(word_ngram_hashes(eval_text, n).tolist())
    return sum(1 for gram in grams if gram in reference_ngrams) / len(grams)


@dataclass(frozen=True)
class _Hit:
    eval_index: int
    overlap: float
    reference_index: int


def _contamination_hits(eval_rows: list[Example], reference_rows: list[Example], n: int,
                        threshold: float) -> list[_Hit]:
    """Eval rows at or over the threshold, each with the reference row holding most of its shared grams."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"contamination threshold is a fraction of n-grams in (0, 1], got {threshold}")
    index = reference_ngram_index([normalized_text(row) for row in reference_rows], n)
    hits = []
    for eval_index, grams in enumerate(_ngram_sets([normalized_text(row) for row in eval_rows], n)):
        owners = [index[gram] for gram in grams if gram in index]
        overlap = len(owners) / len(grams)
        if owners and overlap >= threshold:
            counts = Counter(owners)
            # Most shared grams wins; on a tie the earlier reference row, so the answer is deterministic.
            best = max(counts, key=lambda ref: (counts[ref], -ref))
            hits.append(_Hit(eval_index, overlap, best))
    return hits


def contaminated_rows(eval_rows: list[Example], reference_rows: list[Example], *, n: int = 13,
                      threshold: float = 0.5) -> list[dict[str, Any]]:
    """Find eval rows whose normalised text shares at least `threshold` of its word n-grams with the reference.

    Returns one record per such row, in eval order: ``{"id", "source", "overlap", "matched_in"}`` where
    overlap is the shared fraction (0-1) and matched_in the id of the reference row holding most of the
    shared n-grams. Raises ValueError for a threshold outside (0, 1] or n < 1.
    """
    hits = _contamination_hits(eval_rows, reference_rows, n, threshold)
    return [{"id": eval_rows[hit.eval_index].id, "source": eval_rows[hit.eval_index].source,
             "overlap": hit.overlap, "matched_in": reference_rows[hit.reference_index].id} for hit in hits]


def drop_contaminated(eval_rows: list[Example], flagged: list[dict[str, Any]], n: int) -> StepResult:
    """Drop the eval rows `contaminated_rows` flagged; keep the rest in their order.

    Each dropped row has step "contamination", reason "contaminated" and a detail naming the overlap and the
    reference row that holds most of the shared n-grams.
    """
    hits = {f["id"]: f for f in flagged}
    result = StepResult([])
    for row in eval_rows:
        hit = hits.get(row.id)
        if hit is None:
            result.kept.append(row)
        else:
            result.dropped.append(Dropped("contamination", "contaminated", row.source, row,
                                          detail=f"{hit['overlap']:.2f} of its {n}-grams appear in "
                                                 f"{hit['matched_in']}"))
    return result
