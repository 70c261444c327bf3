import random

import pytest
from helpers import example

from sftjudge.curate.contamination import (
    contaminated_rows,
    drop_contaminated,
    overlap_fraction,
    reference_ngram_index,
)

VOCAB = [f"tok{i}" for i in range(3000)]


def words(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def test_copied_row_is_contaminated_and_unrelated_row_is_not():
    reference = [example(f"train{i}", prompt=words(i), completion=words(100 + i)) for i in range(20)]
    copied = example("test-copy", prompt=words(7).upper(), completion=words(107))  # case differs only
    unrelated = example("test-new", prompt=words(500), completion=words(501))
    records = contaminated_rows([copied, unrelated], reference)
    assert records == [{"id": "test-copy", "source": "mem:test-copy", "overlap": 1.0, "matched_in": "train7"}]


def test_partial_overlap_is_measured_and_compared_with_the_threshold():
    reference = [example("train", prompt=words(1, 100), completion="done")]
    half = " ".join(words(1, 100).split()[:50] + words(2, 50).split())
    row = example("test", prompt=half, completion="done")
    [record] = contaminated_rows([row], reference, threshold=0.3)
    assert 0.35 < record["overlap"] < 0.55
    assert contaminated_rows([row], reference, threshold=0.6) == []


def test_overlap_fraction_counts_distinct_ngrams_and_handles_short_texts():
    reference = reference_ngram_index(["one two three four five"], n=3)
    assert overlap_fraction("one two three four five", reference, n=3) == 1.0
    assert overlap_fraction("one two three nine", reference, n=3) == 0.5
    assert overlap_fraction("seven eight nine ten", reference, n=3) == 0.0
    short = reference_ngram_index(["hello there"], n=13)
    assert overlap_fraction("hello there", short, n=13) == 1.0
    assert overlap_fraction("hello", short, n=13) == 0.0
    assert overlap_fraction("hello there", set(short), n=13) == 1.0  # a plain set works too


def test_reference_index_is_deterministic_and_points_at_the_first_row():
    texts = [words(1), words(1), words(2)]
    index = reference_ngram_index(texts)
    assert index == reference_ngram_index(texts)
    assert set(index.values()) == {0, 2}


def test_matched_in_names_the_reference_row_sharing_most_ngrams():
    a, b = words(10, 40), words(11, 80)
    reference = [example("small", prompt=a, completion="x"), example("big", prompt=b, completion="x")]
    row = example("test", prompt=f"{a} {b}", completion="x")
    [record] = contaminated_rows([row], reference)
    assert record["matched_in"] == "big"


def test_drop_contaminated_balances_books_and_explains():
    reference = [example("train1", prompt=words(3), completion=words(4))]
    rows = [example("t1", prompt=words(3), completion=words(4)), example("t2", prompt=words(9), completion="no")]
    result = drop_contaminated(rows, contaminated_rows(rows, reference), n=13)
    assert len(result.kept) + len(result.dropped) == len(rows)
    assert [r.id for r in result.kept] == ["t2"]
    [dropped] = result.dropped
    assert (dropped.row.id, dropped.step, dropped.reason) == ("t1", "contamination", "contaminated")
    assert dropped.detail == "1.00 of its 13-grams appear in train1"
    assert drop_contaminated(rows, [], n=13).kept == rows


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_invalid_threshold_raises(threshold):
    with pytest.raises(ValueError, match="threshold"):
        contaminated_rows([example("a")], [example("b")], threshold=threshold)
