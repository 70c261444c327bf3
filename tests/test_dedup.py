import os
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE
from datasketch import MinHash
from helpers import example
from hypothesis import given, settings
from hypothesis import strategies as st

from sftjudge.curate.dedup import (
    clusters_from_pairs,
    drop_near_duplicates,
    lsh_candidate_pairs,
    minhash_signatures,
    near_duplicate_clusters,
    verified_pairs,
    word_ngram_hashes,
)
from sftjudge.curate.steps import drop_exact_duplicates, load_rows, normalized_text

VOCAB = [f"word{i}" for i in range(2000)]


def random_text(rng: random.Random, words: int = 100) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edit_one_word(rng: random.Random, text: str) -> str:
    """Change one word in the middle: a 100-word text keeps ~94% of its 3-word shingles."""
    words = text.split()
    words[len(words) // 2] = "edited"
    return " ".join(words)


def partition(texts: list[str], cluster_ids: list[int]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for text, cid in zip(texts, cluster_ids):
        groups.setdefault(cid, set()).add(text)
    return {frozenset(group) for group in groups.values()}


def test_signatures_equal_datasketch_minhash_over_the_same_shingle_hashes():
    texts = ["the quick brown fox jumps over the lazy dog", "two words", "", "a b c d e f"]
    signatures = minhash_signatures(texts, num_perm=64, seed=5)
    assert signatures.shape == (4, 64) and signatures.dtype == np.uint32
    for text, signature in zip(texts, signatures):
        reference = MinHash(num_perm=64, seed=5, hashfunc=lambda value: value)
        reference.update_batch(word_ngram_hashes(text, 3).astype(np.uint32).tolist())
        assert (reference.hashvalues == signature).all()


def test_shingle_hashes_are_the_same_in_another_process():
    text = "deterministic hashing must not depend on the interpreter's hash seed"
    code = ("from sftjudge.curate.dedup import word_ngram_hashes; "
            f"print(word_ngram_hashes({text!r}, 3).tolist())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(word_ngram_hashes(text, 3).tolist())


def test_banding_pairs_rows_that_share_a_whole_band_only():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=40, dtype=np.uint32)
    one_band = rng.integers(0, 2**32, size=40, dtype=np.uint32)
    one_band[20:30] = base[20:30]              # equal in band 2 only: 25% of positions
    every_band_but_one_value = base.copy()
    every_band_but_one_value[::10] += 1        # 90% equal, yet no band is whole
    signatures = np.stack([base, rng.integers(0, 2**32, size=40, dtype=np.uint32), one_band,
                           every_band_but_one_value])
    pairs = lsh_candidate_pairs(signatures, bands=4, rows_per_band=10)
    assert pairs.tolist() == [[0, 2]]


def test_candidate_pairs_do_not_depend_on_row_order():
    # Five rows share band 0 and differ elsewhere: a star around "the first row" would pick a different
    # centre after reordering, and verification of the star's edges would then link different rows.
    rng = np.random.default_rng(1)
    signatures = rng.integers(0, 2**32, size=(8, 20), dtype=np.uint32)
    signatures[:5, :10] = signatures[0, :10]
    for order in (np.arange(8)[::-1], rng.permutation(8)):
        reordered = lsh_candidate_pairs(signatures[order], bands=2, rows_per_band=10)
        mapped = {tuple(sorted((int(order[a]), int(order[b])))) for a, b in reordered}
        assert mapped == {tuple(p) for p in lsh_candidate_pairs(signatures, bands=2, rows_per_band=10).tolist()}


def test_verification_keeps_pairs_whose_estimated_jaccard_reaches_the_threshold():
    base = np.arange(100, dtype=np.uint32)
    seventy = base.copy()
    seventy[:30] += 1000                       # 70% of positions equal
    signatures = np.stack([base, seventy, base])
    pairs = np.array([[0, 1], [0, 2]])
    assert verified_pairs(signatures, pairs, 0.8).tolist() == [[0, 2]]
    assert verified_pairs(signatures, pairs, 0.7).tolist() == [[0, 1], [0, 2]]


def test_union_find_joins_chains_under_their_first_row():
    assert clusters_from_pairs(6, np.array([[3, 4], [1, 4], [0, 2], [2, 5]])) == [0, 1, 0, 1, 1, 0]


def test_near_duplicates_share_a_cluster_and_distinct_texts_do_not():
    rng = random.Random(0)
    bases = [random_text(rng) for _ in range(20)]
    texts = bases + [edit_one_word(rng, base) for base in bases[:10]]
    clusters = near_duplicate_clusters(texts)
    assert clusters == list(range(20)) + list(range(10))


def test_threshold_decides_how_similar_a_pair_must_be():
    rng = random.Random(1)
    base = random_text(rng)
    words = base.split()
    half_changed = " ".join(words[:50] + [f"new{i}" for i in range(50)])  # Jaccard ~ 0.32
    assert near_duplicate_clusters([base, half_changed], threshold=0.8) == [0, 1]
    assert near_duplicate_clusters([base, half_changed], threshold=0.2) == [0, 0]


def test_texts_shorter_than_a_shingle_are_one_shingle():
    texts = ["hello world", "Hello  world", "hello world", "world hello", "", ""]
    # "Hello" differs in case here: clusters see raw text, normalisation is the caller's (normalized_text).
    assert near_duplicate_clusters(texts) == [0, 1, 0, 3, 4, 4]


def test_cluster_ids_are_first_members_and_stable_across_calls_and_orders():
    rng = random.Random(2)
    bases = [random_text(rng, 60) for _ in range(15)]
    texts = bases + [edit_one_word(rng, b) for b in bases[::3]] + bases[:2]
    first = near_duplicate_clusters(texts)
    assert near_duplicate_clusters(texts) == first
    assert all(first[cid] == cid and cid <= i for i, cid in enumerate(first))
    for seed in range(3):
        shuffled = texts[:]
        random.Random(seed).shuffle(shuffled)
        assert partition(shuffled, near_duplicate_clusters(shuffled)) == partition(texts, first)


def test_seed_and_num_perm_change_signatures_not_the_answer_for_clear_cases():
    rng = random.Random(3)
    bases = [random_text(rng) for _ in range(5)]
    texts = bases + [edit_one_word(rng, b) for b in bases]
    a = minhash_signatures(texts, seed=1)
    b = minhash_signatures(texts, seed=2)
    assert not (a == b).all()
    for seed, num_perm in [(2, 128), (7, 256)]:
        assert near_duplicate_clusters(texts, seed=seed, num_perm=num_perm) == list(range(5)) * 2


def test_drop_near_duplicates_keeps_first_names_it_and_balances_the_books():
    rng = random.Random(4)
    bases = [random_text(rng, 40) for _ in range(6)]
    rows = [example(f"r{i}", prompt=text, completion="ok") for i, text in enumerate(bases)]
    rows.append(example("copy", prompt=edit_one_word(rng, bases[2]), completion="ok"))
    rows.append(example("shout", prompt=bases[4].upper(), completion="OK"))  # equal after normalisation
    result, clusters = drop_near_duplicates(rows)
    assert len(result.kept) + len(result.dropped) == len(rows)
    assert [r.id for r in result.kept] == [f"r{i}" for i in range(6)]
    assert [(d.row.id, d.step, d.reason) for d in result.dropped] == [
        ("copy", "near_dedup", "near duplicate"), ("shout", "near_dedup", "near duplicate")]
    assert result.dropped[0].detail == "near-duplicate of r2 (mem:r2), cluster 2"
    assert result.dropped[0].source == "mem:copy"
    assert clusters == {"r0": 0, "r1": 1, "r2": 2, "r3": 3, "r4": 4, "r5": 5, "copy": 2, "shout": 4}


def test_drop_near_duplicates_refuses_duplicate_ids():
    with pytest.raises(ValueError, match="'a'.*unique_ids"):
        drop_near_duplicates([example("a"), example("b", prompt="other"), example("a", prompt="third")])


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 4},
                                    {"shingle_size": 0}])
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        near_duplicate_clusters(["a b c", "a b d"], **kwargs)


def test_empty_input():
    assert near_duplicate_clusters([]) == []
    result, clusters = drop_near_duplicates([])
    assert result.kept == [] and result.dropped == [] and clusters == {}


# Rows drawn from a few base texts with random word edits, so near duplicates are common.
_BASES = [" ".join(f"w{(7 * b + i) % 50}" for i in range(30)) for b in range(4)]
_row_texts = st.lists(
    st.tuples(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["x", "y"])), max_size=6)),
    max_size=25)


@settings(max_examples=40, deadline=None)
@given(_row_texts)
def test_property_books_balance_and_dropped_rows_name_a_kept_row_of_their_cluster(drawn):
    rows = []
    for i, (base, edits) in enumerate(drawn):
        words = _BASES[base].split()
        for position, word in edits:
            words[position] = word
        rows.append(example(f"id{i}", prompt=" ".join(words), completion="c"))
    result, clusters = drop_near_duplicates(rows)
    assert len(result.kept) + len(result.dropped) == len(rows)
    kept_ids = {row.id for row in result.kept}
    assert len({clusters[i] for i in kept_ids}) == len(kept_ids)  # one kept row per cluster
    for dropped in result.dropped:
        named = dropped.detail.split()[2]
        assert named in kept_ids
        assert clusters[named] == clusters[dropped.row.id]


def test_sample_data_planted_near_duplicates_are_found_stably():
    loaded, _ = load_rows(SAMPLE)
    rows = drop_exact_duplicates(loaded.kept).kept
    result, clusters = drop_near_duplicates(rows)
    again, _ = drop_near_duplicates(rows)
    assert [d.row.id for d in again.dropped] == [d.row.id for d in result.dropped]
    assert len(result.dropped) >= 5
    # make_sample_data.py gives its 12 near duplicates the ids t0413-t0424 (one small edit each); those whose
    # edit was casing or spacing are exact duplicates after normalisation and are already gone. The rest
    # (Jaccard ~0.83-0.86 on these short rows) sit right at the 0.8 threshold, so not all of them are caught.
    planted = [row.id for row in rows if 413 <= int(row.id[1:]) <= 424]
    sizes: dict[int, int] = {}
    for cid in clusters.values():
        sizes[cid] = sizes.get(cid, 0) + 1
    found = [pid for pid in planted if sizes[clusters[pid]] > 1]
    assert len(planted) >= 6 and len(found) >= 4
    texts = [normalized_text(row) for row in rows]
    reordered = texts[::-1]
    assert partition(reordered, near_duplicate_clusters(reordered)) == partition(texts, list(clusters.values()))


def test_long_rows_computed_in_permutation_blocks_give_the_same_signatures(monkeypatch):
    import sftjudge.curate.dedup as dedup

    rng = random.Random(5)
    texts = [random_text(rng, 3000), random_text(rng, 10), "x"]
    whole = minhash_signatures(texts, num_perm=64)
    monkeypatch.setattr(dedup, "_WORK_ELEMENTS", 5000)  # forces 1-2 permutations per block
    assert (minhash_signatures(texts, num_perm=64) == whole).all()
