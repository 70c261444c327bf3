"""The whole curation pipeline on in-memory-sized files and on the bundled sample data."""

import json

import pytest
from conftest import SAMPLE
from helpers import write_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from sftjudge.config import DataConfig
from sftjudge.curate.pipeline import build_dataset, curation_cache_key
from sftjudge.errors import DataError

FAST = {"contamination": {"action": "drop"}}


def data_config(path, **overrides) -> DataConfig:
    return DataConfig.model_validate({"path": str(path)} | overrides)


def test_sample_data_books_balance_and_planted_mess_is_caught():
    result = build_dataset(data_config(SAMPLE))
    report = result.report
    assert report["rows_in"] == report["rows_kept"] + report["rows_dropped"] == 431
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["load"]["dropped"] == 7 and report["blank_lines_skipped"] == 1  # 8 planted, one is blank
    assert steps["exact_dedup"]["dropped"] >= 12
    assert steps["near_dedup"]["dropped"] >= 1
    assert sum(report["pii_counts"].values()) >= 20
    for step in report["steps"]:
        assert step["in"] == step["kept"] + step["dropped"], step
    ids = [r.id for split in (result.splits.train, result.splits.val, result.splits.test) for r in split]
    assert len(ids) == len(set(ids))
    # masked rows carry placeholders, never the planted addresses
    text = json.dumps([r.to_json() for r in result.splits.train])
    assert "@example.com" not in text and "[EMAIL]" in text


def test_same_input_same_split(tmp_path):
    a = build_dataset(data_config(SAMPLE))
    b = build_dataset(data_config(SAMPLE))
    assert a.report["test_fingerprint"] == b.report["test_fingerprint"]
    c = build_dataset(data_config(SAMPLE, seed=99))
    assert c.report["test_fingerprint"] != a.report["test_fingerprint"]


def test_near_duplicates_never_straddle_splits_when_kept(tmp_path):
    base = "the quick brown fox jumps over the lazy dog near the river bank at dawn today"
    lines = []
    for i in range(30):
        lines.append({"id": f"a{i}", "prompt": f"{base} variant {i % 3}", "completion": f"answer {i}"})
        lines.append({"id": f"u{i}", "prompt": f"completely different question number {i} about topic {i * 7}",
                      "completion": f"reply {i}"})
    path = write_lines(tmp_path / "d.jsonl", lines)
    result = build_dataset(data_config(path, near_dedup={"enabled": False, "threshold": 0.5},
                                       pii={"action": "off"}, contamination={"action": "report"}))
    where = {r.id: name for name in ("train", "val", "test") for r in getattr(result.splits, name)}
    near = {where[f"a{i}"] for i in range(30)}
    assert len(near) == 1, f"a near-duplicate cluster was split across {near}"


def test_stratified_split_keeps_proportions(tmp_path):
    lines = [{"id": str(i), "prompt": f"question {i} about {'cats' if i % 4 else 'dogs'} {i * 13}",
              "completion": f"a{i}", "topic": "dogs" if i % 4 == 0 else "cats"} for i in range(200)]
    path = write_lines(tmp_path / "d.jsonl", lines)
    result = build_dataset(data_config(path, stratify_by="topic", pii={"action": "off"},
                                       near_dedup={"enabled": False}))
    test_topics = [r.meta["topic"] for r in result.splits.test]
    assert test_topics.count("dogs") == 5 and test_topics.count("cats") == 15


def test_contamination_drop_and_fail(tmp_path):
    shared = " ".join(f"word{i}" for i in range(30))
    lines = [{"id": f"r{i}", "prompt": f"unique prompt {i} " + " ".join(f"t{i}x{j}" for j in range(20)),
              "completion": f"c{i}"} for i in range(40)]
    lines += [{"id": f"dup{i}", "prompt": f"{shared} tail{i}", "completion": f"x{i}"} for i in range(10)]
    path = write_lines(tmp_path / "d.jsonl", lines)
    # near-dedup off keeps the overlapping rows apart from clustering so contamination must catch them
    cfg = {"near_dedup": {"enabled": False, "threshold": 0.99}, "pii": {"action": "off"}}
    dropped = build_dataset(data_config(path, **cfg, contamination={"action": "drop", "threshold": 0.5}))
    assert dropped.report["rows_in"] == dropped.report["rows_kept"] + dropped.report["rows_dropped"]
    with pytest.raises(DataError, match="overlap the training data"):
        build_dataset(data_config(path, **cfg, contamination={"action": "fail", "threshold": 0.5}))


def test_too_few_rows_is_an_error(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match="only 1 usable rows"):
        build_dataset(data_config(path))


def test_cache_key_changes_with_settings_not_with_cache_flag():
    a = data_config(SAMPLE)
    assert curation_cache_key(a, "h", "m", 256, None) == curation_cache_key(
        data_config(SAMPLE, cache=False), "h", "m", 256, None)
    assert curation_cache_key(a, "h", "m", 256, None) != curation_cache_key(
        data_config(SAMPLE, seed=1), "h", "m", 256, None)
    assert curation_cache_key(a, "h", "m", 256, None) != curation_cache_key(a, "h2", "m", 256, None)


row_strategy = st.one_of(
    st.fixed_dictionaries({"prompt": st.sampled_from(["a b c d", "a b c e", "x y z", "", "A  b c d", "mail me@x.io"]),
                           "completion": st.sampled_from(["x", "y", 1, None])}),
    st.just("not json"), st.just([1]), st.just(""),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(row_strategy, min_size=0, max_size=40), st.booleans())
def test_property_rows_in_equal_kept_plus_dropped(tmp_path_factory, lines, near_dedup_on):
    path = write_lines(tmp_path_factory.mktemp("p") / "d.jsonl", lines)
    cfg = data_config(path, val_ratio=0.2, test_ratio=0.2, train_ratio=0.6,
                      near_dedup={"enabled": near_dedup_on, "threshold": 0.5, "shingle_size": 1})
    try:
        result = build_dataset(cfg)
    except DataError as exc:
        assert "usable rows" in str(exc) or "no rows to read" in str(exc)
        return
    assert result.report["rows_in"] == sum(1 for line in lines if line != "")
    assert result.report["rows_in"] == sum(result.splits.sizes().values()) + len(result.dropped)
    assert all(d.reason for d in result.dropped)
    # no near-duplicate pair crosses splits: re-cluster what was kept and check each cluster sits in one split
    from sftjudge.curate.dedup import near_duplicate_clusters
    from sftjudge.curate.steps import normalized_text

    kept = [(name, r) for name in ("train", "val", "test") for r in getattr(result.splits, name)]
    clusters = near_duplicate_clusters([normalized_text(r) for _, r in kept], threshold=0.5, shingle_size=1)
    homes: dict[int, set[str]] = {}
    for (name, _), cid in zip(kept, clusters):
        homes.setdefault(cid, set()).add(name)
    assert all(len(h) == 1 for h in homes.values())
