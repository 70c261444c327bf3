"""Bad input and faults, round three (issue 26), human review: labels from an import, other servers and the browser
all kept, ids with "/", exported CSV cells that never run as formulas, bad labels and label files refused naming
file, line and field, and a manual promotion of the champion that changes nothing - each fix with the reproduction
that failed before it."""

from __future__ import annotations

import pytest

from sftjudge.run import files
from sftjudge.run.io import read_jsonl, write_jsonl


@pytest.fixture
def review_runs(tmp_path, monkeypatch):
    from review_kit import isolated_runs

    return isolated_runs(tmp_path, monkeypatch)


def _review(run):
    from review_kit import review_of

    return review_of(run)


SCORES = [9.5, 8.5, 7.5, 6.0, 5.0, 4.0, 3.0, 2.0]


def test_labels_from_an_import_and_from_other_servers_are_all_kept(review_runs, tmp_path):
    from review_kit import judged_run

    run = judged_run(review_runs, "r1", SCORES, sample_size=8)
    browser, other = _review(run), _review(run)  # a review server running, and a second one on the same run
    ids = [item["id"] for item in browser.sample]
    exported = tmp_path / "labels.jsonl"
    browser.store.export(exported)
    filled = [row | {"passed": True, "grade": 4} for row in read_jsonl(exported)][:6]
    write_jsonl(exported, filled)
    _review(run).store.import_file(exported)  # `sftjudge review RUN --import`, while the server runs
    browser.label(ids[6], {"passed": False, "grade": 2})
    other.label(ids[7], {"passed": True, "grade": 5})
    # before: the browser's label rewrote the file from its own memory (6 imported labels -> 1), the other
    # server's from its own (-> 1 again)
    assert sorted(label["id"] for label in read_jsonl(run / files.REVIEW_LABELS)) == sorted(ids)
    assert browser.shown()["progress"] == {"labelled": 8, "total": 8}


def test_an_item_id_with_a_slash_is_labelled_in_the_browser(review_runs):
    from fastapi.testclient import TestClient
    from review_kit import judged_run

    from sftjudge.review.server import app

    run = judged_run(review_runs, "r1", SCORES, sample_size=4)
    for name in (files.GENERATIONS, files.JUDGMENTS):
        write_jsonl(run / name, [r | {"id": r["id"].replace("-", "/")} for r in read_jsonl(run / name)])
    review = _review(run)
    item = review.sample[0]["id"]
    assert "/" in item
    client = TestClient(app(review), base_url="http://127.0.0.1")
    from urllib.parse import quote

    answer = client.post(f"/api/label/{quote(item, safe='')}", json={"passed": True, "grade": 3})
    assert answer.status_code == 200, answer.text  # was 404: the route took no "/" in an id
    refused = client.post(f"/api/label/{quote(item, safe='')}", content=b'{"passed": true, "grade": 1e999}',
                          headers={"Content-Type": "application/json"})
    assert refused.status_code == 422 and "grade" in refused.text  # was 500 (OverflowError)


def test_exported_cells_that_would_run_as_spreadsheet_formulas_are_text(review_runs, tmp_path):
    import csv

    from review_kit import judged_run

    run = judged_run(review_runs, "r1", SCORES, sample_size=4)
    formula = '=HYPERLINK("http://evil.example","click")'
    write_jsonl(run / files.GENERATIONS, [r | {"text": formula, "instruction": "+cmd|' /C calc'!A0"}
                                          for r in read_jsonl(run / files.GENERATIONS)])
    review = _review(run)
    out = tmp_path / "labels.csv"
    review.store.export(out)
    cells = [cell for row in csv.reader(out.open()) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), [c for c in cells if c[:1] in "=+-@"]
    rows = list(csv.DictReader(out.open()))
    rows[0] |= {"passed": "pass", "grade": "4", "note": "-not a formula, a dash"}
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert review.store.import_file(out)["labelled"] == 1  # the protected cells read back as they were
    assert review.store.labels[rows[0]["id"]]["note"] == "-not a formula, a dash"


@pytest.mark.parametrize("raw, field", [({"grade": float("inf")}, "grade"), ({"grade": "inf"}, "grade"),
                                        ({"choice": 1}, "choice"), ({"note": "x" * 200_000}, "note"),
                                        ({"grade": [4]}, "grade")])
def test_a_bad_label_is_refused_naming_the_field(review_runs, raw, field):
    from review_kit import judged_run

    from sftjudge.errors import DataError

    run = judged_run(review_runs, "r1", SCORES, sample_size=4)
    review = _review(run)
    with pytest.raises(DataError, match=f"field '{field}'"):
        review.label(review.sample[0]["id"], {"passed": True} | raw)


def test_label_files_from_spreadsheets_and_odd_encodings_are_read_or_refused_clearly(review_runs, tmp_path):
    from review_kit import judged_run

    from sftjudge.errors import DataError

    run = judged_run(review_runs, "r1", SCORES, sample_size=4)
    review = _review(run)
    out = tmp_path / "labels.csv"
    review.store.export(out)
    lines = out.read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join(first[:-4] + ["pass", "3", "", "ok"])
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")  # Excel's "CSV UTF-8"
    assert review.store.import_file(bom)["labelled"] == 1  # was: "header lacks id"
    cp1252 = tmp_path / "cp1252.csv"
    cp1252.write_bytes("\n".join(lines).encode() + b"\nx,y,caf\xe9\n")
    with pytest.raises(DataError, match=rf"{cp1252}:{len(lines) + 1}: not UTF-8"):
        review.store.import_file(cp1252)
    nested = tmp_path / "nested.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=f"{nested}:1: "):
        review.store.import_file(nested)


def test_promoting_the_champion_again_says_nothing_changed(review_runs, capsys):
    from review_kit import judged_run, make_champion

    from sftjudge import cli
    from sftjudge.run.registry import Registry

    run = judged_run(review_runs, "r1", SCORES)
    make_champion(review_runs, run)
    history = len(Registry.in_runs_dir(review_runs).champion_history())
    assert cli.main(["promote", "r1", "--runs-dir", str(review_runs)]) == 0
    out = capsys.readouterr().out
    assert "r1 is the champion already; nothing changed" in out and "r1 -> r1" not in out  # before: "r1 -> r1"
    assert len(Registry.in_runs_dir(review_runs).champion_history()) == history


def test_the_review_server_answers_only_this_machine_with_its_key(review_runs):
    from fastapi.testclient import TestClient
    from review_kit import judged_run

    from sftjudge.review.server import app

    run = judged_run(review_runs, "r1", SCORES, sample_size=4)
    review = _review(run)
    item = review.sample[0]["id"]
    key = {"X-Review-Token": "k3y"}
    local = TestClient(app(review, token="k3y"), base_url="http://127.0.0.1:8765")
    assert local.get("/api/sample", headers=key).status_code == 200
    assert local.get("/api/sample").status_code == 403  # before: any page could read the sample
    assert local.get("/api/sample", headers={"X-Review-Token": "k3x"}).status_code == 403
    assert local.post(f"/api/label/{item}", json={"passed": True}).status_code == 403
    rebound = TestClient(app(review, token="k3y"), base_url="http://evil.example:8765")  # DNS rebinding
    assert rebound.get("/api/sample", headers=key).status_code == 400
    huge = local.post(f"/api/label/{item}", content=b'{"note": "' + b"x" * 50_000_000 + b'"}', headers=key)
    assert huge.status_code == 413 and "at most" in huge.json()["detail"]
    assert local.post(f"/api/label/{item}", json={"passed": True}, headers=key).status_code == 200


@pytest.mark.parametrize("port, message", [(99999, "a port is 1-65535"), (-1, "a port is 1-65535"),
                                           ("in use", "is in use")])
def test_a_review_port_that_cannot_be_used_is_refused_in_one_line(review_runs, capsys, port, message):
    import socket

    from review_kit import judged_run

    from sftjudge import cli

    judged_run(review_runs, "r1", SCORES, sample_size=4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        if port == "in use":
            port = taken.getsockname()[1]
        code = cli.main(["review", "r1", "--runs-dir", str(review_runs), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err  # before: exit 3 / traceback


def _passed_champion(review_runs, n=8):
    from review_kit import judged_run, make_champion

    run = judged_run(review_runs, "r1", SCORES[:n], sample_size=n, min_items=n, release_pass_rate=0.9)
    make_champion(review_runs, run)
    review = _review(run)
    for item in review.sample:
        review.label(item["id"], {"passed": True, "grade": 4})
    return run, review


def test_release_refuses_a_sample_whose_answers_were_swapped_and_rehashed(review_runs):
    from sftjudge.errors import DataError
    from sftjudge.review.release import release
    from sftjudge.review.sample import item_hash, sample_hash

    run, review = _passed_champion(review_runs)
    sample = read_jsonl(run / files.REVIEW_SAMPLE)
    sample[2]["answer"] = "a far better answer than the run gave"  # what the person passed is not the run's
    sample[2]["content_sha256"] = item_hash(sample[2])
    write_jsonl(run / files.REVIEW_SAMPLE, sample)
    labels = [label | {"sample_sha256": sample_hash(sample)} for label in read_jsonl(run / files.REVIEW_LABELS)]
    write_jsonl(run / files.REVIEW_LABELS, labels)
    with pytest.raises(DataError, match=rf"sample.jsonl:3: item {sample[2]['id']!r}: field 'answer' differs"):
        release(run, review.config)  # before: released
    assert not (run / files.REVIEW_RELEASE).exists()

    run, review = _passed_champion(review_runs / "again")
    rows = read_jsonl(run / files.REVIEW_LABELS)
    rows[1]["grade"] = 99
    write_jsonl(run / files.REVIEW_LABELS, rows)
    with pytest.raises(DataError, match=r"1 label\(s\) in .*labels.jsonl would be refused.*:2: field 'grade'"):
        release(run, review.config)  # before: released on a label the page could never have given


def test_a_release_bar_lowered_on_the_command_line_is_said_loudly_and_recorded(review_runs, capsys):
    from review_kit import judged_run, make_champion

    from sftjudge import cli
    from sftjudge.run.registry import Registry

    run = judged_run(review_runs, "r1", SCORES, sample_size=8, min_items=8, release_pass_rate=0.9)
    make_champion(review_runs, run)
    review = _review(run)
    for n, item in enumerate(review.sample):
        review.label(item["id"], {"passed": n >= 4})  # 50%
    assert cli.main(["release", "r1", "review.release_pass_rate=0.5", "--runs-dir", str(review_runs)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the release bar was lowered on the command line: review.release_pass_rate 0.9 -> 0.5" in err
    [stored] = Registry.in_runs_dir(review_runs).releases()
    assert stored["bar"]["lowered"] == {"release_pass_rate": {"from": 0.9, "to": 0.5}}
