import pytest
from helpers import example, write_lines

from sftjudge.curate.rows import RowError, example_from_obj
from sftjudge.curate.split import split_rows
from sftjudge.curate.steps import drop_duplicate_ids, drop_exact_duplicates, load_rows
from sftjudge.errors import DataError


def test_formats_map_to_one_row_shape():
    pc = example_from_obj({"prompt": "p", "completion": "c"}, row_id="a", source="f:1")
    alpaca = example_from_obj({"instruction": "p", "input": "ctx", "output": "c"}, row_id="b", source="f:2")
    chat = example_from_obj({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "p"},
                                          {"role": "assistant", "content": "c"}]}, row_id="c", source="f:3")
    assert pc.completion == alpaca.completion == chat.completion == "c"
    assert alpaca.instruction == "p\n\nctx"
    assert chat.prompt_messages[0] == {"role": "system", "content": "s"}
    assert pc.id == "a"


@pytest.mark.parametrize("obj, field", [
    ({"prompt": "p"}, "completion"),
    ({"prompt": "", "completion": "c"}, "prompt"),
    ({"prompt": "p", "completion": 5}, "completion"),
    ({"prompt": None, "completion": "c"}, "prompt"),
    ({"messages": [{"role": "user", "content": "p"}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "p"}, {"role": "assistant", "content": "c"}]}, "messages[0].role"),
])
def test_bad_rows_name_the_field(obj, field):
    with pytest.raises(RowError) as info:
        example_from_obj(obj, row_id="x", source="f:1")
    assert info.value.field == field


def test_load_quarantines_with_file_line_and_reason(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"prompt": "a", "completion": "b"}, '{"prompt": "broken', "", [1, 2], {"prompt": "p", "completion": 3}])
    path.write_bytes(path.read_bytes() + b'{"prompt": "\xff", "completion": "x"}\n')
    result, blank = load_rows(path)
    assert len(result.kept) == 1 and blank == 1
    sources = {d.source.rsplit(":", 1)[1]: d.reason for d in result.dropped}
    assert sources == {"2": "invalid JSON", "4": "field '(row)' must be a JSON object, got list",
                       "5": "field 'completion' must be a string, got int", "6": "not valid UTF-8"}


def test_strict_mode_fails_on_first_bad_row(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'completion' missing"):
        load_rows(path, strict=True)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unusable_paths_raise_clear_errors(tmp_path, make):
    path = tmp_path / "data"
    if make == "directory":
        path.mkdir()
    with pytest.raises(DataError, match="does not exist" if make == "missing" else "is a directory"):
        load_rows(path)


def test_exact_dedup_normalises_case_whitespace_and_unicode():
    rows = [example(1, "Hello  World"), example(2, "hello world"), example(3, "ｈｅｌｌｏ world"), example(4, "bye")]
    result = drop_exact_duplicates(rows)
    assert [r.id for r in result.kept] == ["1", "4"]
    assert all(d.reason == "exact duplicate" and "1" in d.detail for d in result.dropped)


def test_duplicate_ids_are_dropped():
    result = drop_duplicate_ids([example(1, "a"), example(1, "b")])
    assert len(result.kept) == 1 and result.dropped[0].reason == "duplicate id"


def test_split_is_seeded_and_independent_of_file_order():
    rows = [example(i, f"question {i}") for i in range(50)]
    a = split_rows(rows, val_ratio=0.1, test_ratio=0.2, seed=3)
    b = split_rows(list(reversed(rows)), val_ratio=0.1, test_ratio=0.2, seed=3)
    c = split_rows(rows, val_ratio=0.1, test_ratio=0.2, seed=4)
    assert [r.id for r in a.test] == [r.id for r in b.test]
    assert [r.id for r in a.test] != [r.id for r in c.test]
    assert a.sizes() == {"train": 35, "val": 5, "test": 10}
