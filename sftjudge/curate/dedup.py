"""Near-duplicate detection: MinHash signatures over word shingles, LSH banding, union-find clusters.

Four stages, each a plain function (text-dedup's shape): `minhash_signatures` fingerprints texts into a
compact ``(rows, num_perm)`` uint32 array, `lsh_candidate_pairs` bands the signatures and pairs rows that
share a bucket, `verified_pairs` keeps the pairs whose estimated Jaccard similarity reaches the threshold,
and `clusters_from_pairs` joins those into clusters (union-find). `drop_near_duplicates` is the curation
step on top: keep the first row of each cluster, drop the rest naming the row that was kept.

The signatures are exactly datasketch's ``affine32`` MinHash (same permutations for the same ``num_perm``
and ``seed``) fed with our 32-bit shingle hashes; we compute them for many rows at once with numpy because
per-row ``MinHash`` objects cost far more time and memory (see bench/dedup.py). The banding is MinHashLSH's
rule (a pair is a candidate when it shares every hash value of at least one band; (b, r) from MinHashLSH's
optimiser, weighted towards recall since candidates are verified), done with numpy sorts instead of
millions of Python dict entries.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from sftjudge.curate.rows import Example
from sftjudge.curate.steps import Dropped, StepResult, normalized_text

# Rows fingerprinted per numpy batch: 256 rows of 100 words fill a (128 permutations x shingles) work
# array of ~13 MB; larger batches gained nothing and smaller ones pay more per-call overhead.
_BATCH_ROWS = 256
# Work array size (uint32 elements, 16 MiB): caps memory however long the rows in a batch are.
_WORK_ELEMENTS = 1 << 22

# Odd 64-bit multipliers for mixing word hashes into n-gram hashes and band values into bucket keys.
# Any odd constants work; these are the golden-ratio and a splitmix64 constant.
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_BAND_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)


def _fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads a polynomial combination's bits over the whole word."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix datasketch's affine32 scheme applies to every input hash."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def batch_ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash the word n-grams of many texts at once: returns (hashes, starts).

    `hashes` is a uint64 array of every text's n-gram hashes back to back; text i owns
    ``hashes[starts[i]:starts[i+1]]``. Words are the text's UTF-8 bytes split on ASCII whitespace; each
    word is hashed with xxh3 (seed 0), so the result is the same in every process and Python version,
    unlike the salted built-in ``hash()``. A text with fewer than n words (including an empty text) gets
    one gram made of all its words. Raises ValueError if n < 1.

    >>> hashes, starts = batch_ngram_hashes(["a b c d", "a b", "b c d"], 3)
    >>> starts.tolist()
    [0, 2, 3]
    >>> bool(hashes[1] == hashes[3])  # "b c d" is the second 3-gram of the first text
    True
    """
    if n < 1:
        raise ValueError(f"n-gram size must be at least 1, got {n}")
    word_lists = [text.encode("utf-8").split() or [b""] for text in texts]
    counts = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
    words = np.fromiter(map(xxhash.xxh3_64_intdigest, chain.from_iterable(word_lists)),
                        dtype=np.uint64, count=int(counts.sum()))
    word_ends = np.cumsum(counts)
    grams_per_text = np.maximum(counts - n + 1, 1)
    gram_starts = np.cumsum(grams_per_text) - grams_per_text
    # Position of each gram's first word in `words`: the text's first word plus the gram's rank in the text.
    total_grams = int(grams_per_text.sum())
    first_word = np.repeat(word_ends - counts - gram_starts, grams_per_text) + np.arange(total_grams)
    text_end = np.repeat(word_ends, grams_per_text)
    hashes = words[first_word]
    last = len(words) - 1
    for offset in range(1, n):
        position = first_word + offset
        extended = hashes * _NGRAM_MULTIPLIER + words[np.minimum(position, last)]
        # Grams of short texts stop at the text's last word instead of reading the next text's words.
        hashes = np.where(position < text_end, extended, hashes)
    return _fmix64(hashes), gram_starts


def word_ngram_hashes(text: str, n: int) -> np.ndarray:
    """The uint64 hashes of one text's word n-grams, in text order (see `batch_ngram_hashes`).

    >>> len(word_ngram_hashes("one two three four", 3)), len(word_ngram_hashes("one two", 3))
    (2, 1)
    >>> bool((word_ngram_hashes("a b c", 2) == word_ngram_hashes("a  b\\nc", 2)).all())
    True
    """
    return batch_ngram_hashes([text], n)[0]


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) uint32 parameters of datasketch's affine32 MinHash for this num_perm and seed.

    Taken from datasketch itself so our signatures equal ``MinHash(num_perm, seed).update_batch(...)``.
    Raises ValueError if num_perm < 1.
    """
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def minhash_signatures(texts: list[str], *, num_perm: int = 128, shingle_size: int = 3,
                       seed: int = 1) -> np.ndarray:
    """MinHash signatures of texts as a ``(len(texts), num_perm)`` uint32 array.

    Row i equals the ``hashvalues`` of a datasketch ``MinHash(num_perm, seed)`` (affine32 scheme) updated
    with the low 32 bits of text i's word-shingle hashes. Computed in batches of rows with numpy, holding
    only the output (4 * num_perm bytes per text), one batch's shingle hashes and a 16 MiB work array.
    Raises ValueError for num_perm < 1 or shingle_size < 1.
    """
    if shingle_size < 1:
        raise ValueError(f"shingle_size must be at least 1 word, got {shingle_size}")
    a, b = minhash_permutations(num_perm, seed)
    a_col, b_col = a[:, None], b[:, None]
    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    # One work buffer reused across batches: a fresh array per batch costs more in page faults than the
    # arithmetic itself (measured 4x slower). Its fixed size also bounds memory when rows are very long:
    # a batch with more shingles is then done a block of permutations at a time.
    work = np.empty(_WORK_ELEMENTS, dtype=np.uint32)
    for lo in range(0, len(texts), _BATCH_ROWS):
        hashes, starts = batch_ngram_hashes(texts[lo:lo + _BATCH_ROWS], shingle_size)
        mixed = _fmix32(hashes.astype(np.uint32))  # astype keeps the low 32 bits
        if len(mixed) > work.size:  # one batch longer than the buffer (a 50 MB row): grow it for one permutation
            work = np.empty(len(mixed), dtype=np.uint32)
        block = max(1, work.size // len(mixed))
        for p0 in range(0, num_perm, block):
            p1 = min(num_perm, p0 + block)
            # Layout (permutations, shingles): reducing along the contiguous last axis is ~40x faster.
            permuted = work[:(p1 - p0) * len(mixed)].reshape(p1 - p0, len(mixed))
            np.multiply(a_col[p0:p1], mixed[None, :], out=permuted)
            permuted += b_col[p0:p1]  # uint32 wraparound is the "mod 2^32" of the affine permutation
            signatures[lo:lo + len(starts), p0:p1] = np.minimum.reduceat(permuted, starts, axis=1).T
    return signatures


# False negatives weigh 4x false positives when choosing (bands, rows per band): every candidate pair is
# verified against the threshold afterwards, so extra candidates cost only a comparison, while a pair the
# banding misses is lost. With MinHashLSH's even weights, pairs at Jaccard 0.83 were found about half the time.
_LSH_WEIGHTS = (0.2, 0.8)

# Rows hashed per block when fingerprinting signature columns: a block stays in cache while every column
# of it is read, instead of striding through the whole (rows, num_perm) array once per column.
_HASH_BLOCK_ROWS = 8192

# Candidate pairs compared per block during verification, bounding the gathered (pairs, num_perm) arrays.
_VERIFY_BLOCK_PAIRS = 65536


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold and num_perm, recall-weighted.

    >>> lsh_bands(0.8, 128)
    (12, 10)

    Raises ValueError for a threshold outside [0, 1] or a num_perm too small for two bands.
    """
    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    except ValueError as exc:
        raise ValueError(f"cannot band num_perm={num_perm} signatures for threshold {threshold}: {exc} "
                         f"(use num_perm of 16 or more)") from None
    return lsh.b, lsh.r


def _hash_rows(values: np.ndarray) -> np.ndarray:
    """One uint64 key per row of a (rows, width) uint32 array; equal rows get equal keys."""
    keys = np.empty(len(values), dtype=np.uint64)
    for lo in range(0, len(values), _HASH_BLOCK_ROWS):
        block = values[lo:lo + _HASH_BLOCK_ROWS]
        acc = np.zeros(len(block), dtype=np.uint64)
        for column in block.T:
            acc = (acc ^ column.astype(np.uint64)) * _BAND_MULTIPLIER
        keys[lo:lo + len(block)] = _fmix64(acc)
    return keys


def lsh_candidate_pairs(signatures: np.ndarray, *, bands: int, rows_per_band: int) -> np.ndarray:
    """Pairs of rows that share all values of at least one band: an ``(m, 2)`` int64 array, unique, sorted.

    Each bucket becomes a star: every member is paired with the bucket's canonical member, the one whose
    whole signature hashes lowest (ties only between equal signatures, broken by index). Choosing it by
    content rather than position keeps the pairs independent of input order, and a star keeps the cost
    linear in the bucket size. Raises ValueError if bands * rows_per_band exceeds the signature width.
    """
    n_rows, width = signatures.shape
    if bands * rows_per_band > width:
        raise ValueError(f"{bands} bands x {rows_per_band} rows need {bands * rows_per_band} hash values, "
                         f"signatures have {width}")
    fingerprints = _hash_rows(signatures)
    pairs = [np.empty((0, 2), dtype=np.int64)]
    for k in range(bands):
        band = signatures[:, k * rows_per_band:(k + 1) * rows_per_band]
        keys = _hash_rows(band)
        order = np.lexsort((fingerprints, keys))  # by bucket, then fingerprint; stable, so then by index
        sorted_keys = keys[order]
        new_bucket = np.ones(n_rows, dtype=bool)
        new_bucket[1:] = sorted_keys[1:] != sorted_keys[:-1]
        canonical = order[np.maximum.accumulate(np.where(new_bucket, np.arange(n_rows), 0))]
        first, other = canonical[~new_bucket], order[~new_bucket]
        # A 64-bit key collision between different bands is rare but possible; only equal bands pair up.
        same = (band[first] == band[other]).all(axis=1)
        first, other = first[same], other[same]
        pairs.append(np.stack([np.minimum(first, other), np.maximum(first, other)], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def verified_pairs(signatures: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs whose MinHash estimate of Jaccard similarity is at least `threshold`.

    The estimate is the share of equal signature positions (what ``MinHash.jaccard`` computes); its
    standard error is about sqrt(J(1-J)/num_perm), 0.035 at J=0.8 with 128 permutations. Never raises.
    """
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), _VERIFY_BLOCK_PAIRS):
        block = pairs[lo:lo + _VERIFY_BLOCK_PAIRS]
        equal = signatures[block[:, 0]] == signatures[block[:, 1]]
        keep[lo:lo + len(block)] = equal.mean(axis=1) >= threshold
    return pairs[keep]


def clusters_from_pairs(n_rows: int, pairs: np.ndarray) -> list[int]:
    """Union-find over pairs: a cluster id per row, the smallest row index in its cluster.

    >>> clusters_from_pairs(5, np.array([[1, 3], [3, 4]]))
    [0, 1, 2, 1, 1]
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression keeps long chains from making later finds quadratic
            parent[x], x = root, parent[x]
        return root

    for u, v in pairs.tolist():
        ru, rv = find(u), find(v)
        if ru != rv:
            # Attaching the larger root under the smaller keeps every root the cluster's first row.
            parent[max(ru, rv)] = min(ru, rv)
    labels = list(range(n_rows))
    for x in list(parent):
        labels[x] = find(x)
    return labels


def near_duplicate_clusters(texts: list[str], *, threshold: float = 0.8, num_perm: int = 128,
                            shingle_size: int = 3, seed: int = 1) -> list[int]:
    """Cluster near-duplicate texts: returns one cluster id per text, the index of the cluster's first text.

    Texts are compared as sets of word shingles (`shingle_size` words; shorter texts are one shingle) by
    MinHash with `num_perm` permutations from `seed`. Two texts are linked when they share an LSH bucket
    (see `lsh_candidate_pairs`) and their estimated Jaccard similarity is at least `threshold`; a cluster
    is a chain of links, so its ends may be less similar than the threshold. Which texts share a cluster
    depends only on the texts, not on their order; the ids (first index) do follow the order. Deterministic
    across runs and processes. Raises ValueError for a threshold outside (0, 1], a num_perm too small to
    band (under ~16) or shingle_size < 1.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a Jaccard similarity in (0, 1], got {threshold}")
    bands, rows_per_band = lsh_bands(threshold, num_perm)
    signatures = minhash_signatures(texts, num_perm=num_perm, shingle_size=shingle_size, seed=seed)
    candidates = lsh_candidate_pairs(signatures, bands=bands, rows_per_band=rows_per_band)
    return clusters_from_pairs(len(texts), verified_pairs(signatures, candidates, threshold))


def drop_near_duplicates(rows: list[Example], *, threshold: float = 0.8, num_perm: int = 128,
                         shingle_size: int = 3, seed: int = 1) -> tuple[StepResult, dict[str, int]]:
    """Keep the first row of each near-duplicate cluster (input order); drop the others naming the kept row.

    Rows are compared on `normalized_text` (see `near_duplicate_clusters` for the parameters). Returns the
    step result and ``{row id: cluster id}`` for every input row, where the cluster id is the input index of
    the cluster's kept row, so a split can keep a cluster's rows together. Raises ValueError if two rows
    share an id (run the unique-ids step first) or for invalid parameters.
    """
    seen: dict[str, Example] = {}
    for row in rows:
        if row.id in seen:
            raise ValueError(f"row id {row.id!r} at {row.source} already used at {seen[row.id].source}; "
                             f"near-dedup needs unique ids (run the unique_ids step first)")
        seen[row.id] = row
    clusters = near_duplicate_clusters([normalized_text(row) for row in rows], threshold=threshold,
                                       num_perm=num_perm, shingle_size=shingle_size, seed=seed)
    result = StepResult([])
    for index, (row, cid) in enumerate(zip(rows, clusters)):
        if cid == index:
            result.kept.append(row)
        else:
            kept = rows[cid]
            result.dropped.append(Dropped("near_dedup", "near duplicate", row.source, row,
                                          detail=f"near-duplicate of {kept.id} ({kept.source}), cluster {cid}"))
    return result, {row.id: cid for row, cid in zip(rows, clusters)}
