"""Bad input data: every bad row is quarantined naming file, line, field and reason, or the run stops with an
error naming the file - and the books always balance (rows in = rows kept + rows dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftjudge.config import DataConfig
from sftjudge.curate.pipeline import build_dataset
from sftjudge.curate.stage import curate_stage
from sftjudge.curate.steps import load_rows
from sftjudge.errors import DataError
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_jsonl
from sftjudge.run.stage import start_run

from .faultkit import fault_config, tiny_rows

TEN_MB = 10 * 1024 * 1024

# (raw line, what its quarantine reason must say); None: the line is valid and must be kept.
BAD_LINES = [
    (b'{"prompt": "broken', "invalid JSON"),
    (b'{"prompt": "where is my parcel"}', "field 'completion' missing"),
    (b'{"completion": "an answer without a question"}', "field 'prompt' missing"),
    (b'{"prompt": ["a", "list"], "completion": "c"}', "field 'prompt' must be a string, got list"),
    (b'{"prompt": "p", "completion": 5}', "field 'completion' must be a string, got int"),
    (b'{"messages": "hello"}', "field 'messages' must be a non-empty list"),
    (b'{"prompt": "", "completion": "c"}', "field 'prompt' is empty"),
    (b'{"prompt": "   ", "completion": "c"}', "field 'prompt' is empty"),
    (b'{"prompt": "p", "completion": ""}', "field 'completion' is empty"),
    (b'{"prompt": "caf\xe9 au lait", "completion": "x"}', "not valid UTF-8"),
    (b"null", "must be a JSON object, got NoneType"),
    (b"42", "must be a JSON object, got int"),
    (b'["prompt", "completion"]', "must be a JSON object, got list"),
    (b'{"prompt": "p", "completion": "c", "extra": {"nested": [1]}, "tag": "kept"}', None),
    # dropped without tokenizing it (that alone would take tens of seconds): its size already rules it out
    (json.dumps({"prompt": "word " * (TEN_MB // 5), "completion": "c"}).encode(),
     f"longer than max_seq_len: {TEN_MB + 1} characters"),
]


@pytest.mark.model
def test_every_bad_row_is_quarantined_with_file_line_field_and_reason(tmp_path, tiny_model_dir):
    good = [json.dumps(r).encode() for r in tiny_rows(12)]
    lines = good[:6] + [line for line, _ in BAD_LINES] + [b"", b"   "] + good[6:]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = fault_config(tmp_path / "runs", path)
    run = RunDir(Path(start_run(config)))
    curate_stage(str(run.path), config)

    quarantine = {q["source"]: q for q in read_jsonl(run / files.QUARANTINE)}
    for offset, (_, expected) in enumerate(BAD_LINES):
        source = f"{path}:{7 + offset}"
        if expected is None:
            assert source not in quarantine
            continue
        assert source in quarantine, f"line {7 + offset} ({expected}) was not quarantined"
        entry = quarantine[source]
        assert expected in f"{entry['reason']}: {entry['detail']}", entry["reason"]
        assert entry["step"] and entry["row"] is not None
    assert len(quarantine) == sum(1 for _, e in BAD_LINES if e)

    report = json.loads((run / files.DATA_REPORT).read_text())
    assert report["rows_in"] == len(lines) - 2  # every non-blank line is a row, `null` included
    assert report["blank_lines_skipped"] == 2
    kept = sum(len(read_jsonl(run / f"data/{s}.jsonl")) for s in ("train", "val", "test"))
    assert kept == report["rows_kept"] == 13
    assert report["rows_in"] == kept + len(read_jsonl(run / files.QUARANTINE)) == kept + report["rows_dropped"]
    for step in report["steps"]:
        assert step["in"] == step["kept"] + step["dropped"], step


@pytest.mark.parametrize("line, field", [
    (b'{"prompt": "broken', "invalid JSON"),
    (b'{"prompt": "p", "completion": 5}', "field 'completion'"),
    (b'{"prompt": "", "completion": "c"}', "field 'prompt'"),
    (b'{"prompt": "\xff", "completion": "c"}', "not valid UTF-8"),
    (b"null", "field '(row)'"),
])
def test_strict_mode_stops_at_the_first_bad_row_naming_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(tiny_rows(1)[0]).encode() + b"\n" + line + b"\n")
    with pytest.raises(DataError) as info:
        load_rows(path, strict=True)
    assert f"{path}:2: {field}" in str(info.value) and "data.strict" in str(info.value)


def _unusable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / "data.jsonl"
    if kind == "empty file":
        path.write_bytes(b"")
        return path, "the file is empty or holds only blank lines"
    if kind == "only blank lines":
        path.write_bytes(b"\n  \n\n")
        return path, "the file is empty or holds only blank lines"
    if kind == "missing file":
        return path, "file does not exist"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory"
    if kind == "unsupported type":
        path = tmp_path / "data.txt"
        path.write_text("prompt: completion\n")
        return path, "unsupported file type"
    path = tmp_path / "data.json"
    path.write_text('[{"prompt": "a", "completion": "b"},')
    return path, "not a valid JSON document"


@pytest.mark.model
@pytest.mark.parametrize("kind", ["empty file", "only blank lines", "missing file", "directory",
                                  "unsupported type", "truncated .json"])
def test_unusable_source_fails_the_curate_stage_naming_the_file(tmp_path, tiny_model_dir, kind):
    path, message = _unusable(tmp_path, kind)
    config = fault_config(tmp_path / "runs", path)
    run = RunDir(Path(start_run(config)))
    with pytest.raises(DataError, match=message) as info:
        curate_stage(str(run.path), config)
    assert str(path) in str(info.value)
    failed = run.stage_info("curate")
    assert failed["status"] == "failed" and str(path) in failed["error"]
    assert not (run / files.TRAIN).exists()  # nothing downstream can start from half a curation


LINE_POOL = [
    json.dumps({"prompt": "how do I reset my router", "completion": "hold the button"}).encode(),
    json.dumps({"prompt": "refund for a broken kettle", "completion": "sent"}).encode(),
    json.dumps({"instruction": "classify", "input": "late parcel", "output": "delivery"}).encode(),
    b'{"prompt": "x", "completion": null}', b'{"prompt": 1, "completion": "y"}', b"null", b"true", b"{}",
    b'{"prompt": "tr\xc3', b"\xff\xfe\x00", b"not json at all", b"", b"   ", b'{"messages": []}',
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
]


def _decodes(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(LINE_POOL), max_size=30))
def test_property_books_balance_for_any_mix_of_bad_lines(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("mix") / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    non_blank = sum(1 for line in lines if line.strip())
    not_utf8 = sum(1 for line in lines if line.strip() and not _decodes(line))
    try:
        loaded, blank = load_rows(path)
    except DataError as exc:
        # The one refusal of a whole file: mostly not UTF-8 (at least 5 such lines, over half), named once.
        assert "lines are not UTF-8" in str(exc) and not_utf8 >= 5 and not_utf8 * 2 > non_blank, str(exc)
        return
    assert len(loaded.kept) + len(loaded.dropped) == non_blank and blank == len(lines) - non_blank
    assert all(d.reason and d.source.startswith(f"{path}:") for d in loaded.dropped)
    try:
        result = build_dataset(DataConfig(path=str(path), near_dedup={"enabled": False}))
    except DataError as exc:
        assert "usable rows" in str(exc)
        return
    assert result.report["rows_in"] == non_blank == sum(result.splits.sizes().values()) + len(result.dropped)
