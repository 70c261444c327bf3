"""Human review without a browser: the frozen sample, labels saved as given, export/import that refuses bad files
naming file, line and field, judge-human agreement with intervals, and release only on a passing acceptance set."""

from __future__ import annotations

import csv
import json

import pytest
from review_kit import isolated_runs, judged_run, make_champion, review_of

from sftjudge.cli import main
from sftjudge.config import ReviewConfig
from sftjudge.errors import DataError
from sftjudge.review.agreement import agreement
from sftjudge.review.labels import LabelStore
from sftjudge.review.release import release
from sftjudge.review.sample import load_or_build, sample_hash
from sftjudge.run import files
from sftjudge.run.io import read_jsonl, write_jsonl
from sftjudge.run.registry import Registry

SCORES = [9.5, 9.0, 8.5, 8.0, 7.5, 7.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 9.2, 8.8, 3.5, 6.5, 5.5, 4.5, 7.8,
          8.1, 2.2, 9.9, 1.1]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    return isolated_runs(tmp_path, monkeypatch)


def test_the_sample_spans_the_score_range_and_stays_frozen(runs):
    run = judged_run(runs, "r1", SCORES, sample_size=12)
    sample = load_or_build(run, 12)
    scores = [item["judge_score"] for item in sample]
    assert len(sample) == 12 and min(scores) <= 1.5 and max(scores) >= 9.5
    assert sum(item["why"] == "disagreement" for item in sample) == 3
    assert all(len(item["content_sha256"]) == 64 for item in sample)
    # Rejudging the run does not change what the person is grading: the sample is read back as written.
    write_jsonl(run / files.JUDGMENTS, [j | {"score": 5.0} for j in read_jsonl(run / files.JUDGMENTS)])
    assert load_or_build(run, 12) == sample


def test_each_label_is_saved_at_once_and_survives_a_restart(runs):
    run = judged_run(runs, "r1", SCORES, sample_size=5)
    review = review_of(run)
    first = review.sample[0]["id"]
    review.label(first, {"passed": True, "grade": 4, "note": "fine"})
    saved = read_jsonl(run / files.REVIEW_LABELS)
    assert [(s["id"], s["passed"], s["grade"], s["note"]) for s in saved] == [(first, True, 4, "fine")]
    again = review_of(run)  # a killed server and a new one: nothing lost
    assert again.store.labels[first]["grade"] == 4 and again.store.progress() == {"labelled": 1, "total": 5}
    with pytest.raises(DataError, match="field 'grade' is 6, outside 1-5"):
        again.label(first, {"passed": True, "grade": 6})
    with pytest.raises(DataError, match="field 'id' is 'nope'"):
        again.label("nope", {"passed": True})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_then_import_round_trips_and_bad_files_are_refused(runs, tmp_path, suffix):
    run = judged_run(runs, "r1", SCORES, sample_size=6)
    store = review_of(run).store
    out = tmp_path / f"labels{suffix}"
    assert store.export(out) == 6
    rows = _read(out)
    for n, row in enumerate(rows):
        row.update(passed="pass" if n % 2 else "fail", grade=str(1 + n % 5), note=f"n{n}")
    rows[-1].update(passed="", grade="", note="")  # left empty: not a label, counted as such
    _write(out, rows)
    counts = store.import_file(out)
    assert counts == {"rows": 6, "labelled": 5, "left_empty": 1}
    assert sorted(label["grade"] for label in store.labels.values()) == [1, 2, 3, 4, 5]

    line = 3 if suffix == ".csv" else 2  # the second data row (CSV: line 1 is the header)
    for change, message in (({"id": "ghost"}, "field 'id' is 'ghost'"),
                            ({"grade": "7"}, "field 'grade' is 7, outside 1-5"),
                            ({"grade": "x"}, "field 'grade' is 'x'"),
                            ({"passed": "maybe"}, "field 'passed' is 'maybe'"),
                            ({"content_sha256": "0" * 64}, "changed since this file was exported"),
                            ({"id": rows[0]["id"], "content_sha256": rows[0]["content_sha256"]}, "repeats line")):
        bad = [dict(r) for r in rows]
        bad[1].update(change)
        _write(out, bad)
        with pytest.raises(DataError, match=rf"{out}:{line}: .*{message}"):
            store.import_file(out)


def _read(path):
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    return [{k: ("" if v is None else str(v) if k in ("passed", "grade") else v) for k, v in r.items()}
            for r in read_jsonl(path)]


def _write(path, rows):
    if path.suffix == ".csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_blind_choice_is_mapped_back_to_run_or_champion(runs):
    champion = judged_run(runs, "champ", SCORES)
    run = judged_run(runs, "r2", SCORES, champion=champion.path, outcomes=["win"] * len(SCORES), sample_size=8)
    review = review_of(run)
    for item in review.sample:
        shown = next(i for i in review.shown()["items"] if i["id"] == item["id"])
        assert set(shown["pair"]) == {item["answer"], item["champion_answer"]}
        assert "run_first" not in shown and "champion" not in json.dumps(shown["pair"])  # nothing names the sides
        run_position = "first" if shown["pair"][0] == item["answer"] else "second"
        review.label(item["id"], {"passed": True, "choice": run_position})
    result = review.agreement()
    assert result["pairwise"] == {"items": 8, "agreement": 1.0, "ci": [1.0, 1.0]}  # the judge said win; so did we
    assert {item["run_first"] for item in review.sample} == {True, False}  # both orders occur


def test_agreement_and_calibration_status():
    sample = [{"id": str(i), "judge_score": s} for i, s in enumerate([9.0] * 15 + [2.0] * 10)]
    agree = {str(i): {"passed": i < 15, "grade": 5 if i < 15 else 1, "choice": None} for i in range(25)}
    result = agreement(sample, agree, {}, ReviewConfig(), judge="j")
    assert result["calibrated"] and result["pass_fail"]["agreement"] == 1.0
    assert result["grades"]["spearman"] == 1.0 and "calibrated on this test split" in result["status"]
    disagree = {k: v | {"passed": not v["passed"]} if int(k) % 3 == 0 else v for k, v in agree.items()}
    result = agreement(sample, disagree, {}, ReviewConfig(), judge="j")
    low, high = result["pass_fail"]["ci"]
    assert result["pass_fail"]["agreement"] == 0.64 and low < 0.64 < high and not result["calibrated"]
    assert "not calibrated" in result["status"] and "below 80%" in result["status"]
    few = agreement(sample[:5], agree, {}, ReviewConfig(), judge="j")
    assert not few["calibrated"] and "5 items labelled pass/fail, 20 needed" in few["status"]


def test_release_needs_the_champion_and_a_passing_acceptance_set(runs, capsys):
    run = judged_run(runs, "r1", SCORES, sample_size=20, min_items=20, release_pass_rate=0.9)
    review = review_of(run)
    with pytest.raises(DataError, match="not the champion.*0 of 20 acceptance items have a pass/fail label"):
        release(run, review.config)
    make_champion(runs, run)
    for n, item in enumerate(review.sample):
        review.label(item["id"], {"passed": n >= 3})  # 17 of 20 pass: 85% < 90%
    with pytest.raises(DataError, match=r"passed 17 of 20 \(85%\); the bar is 90%"):
        release(run, review.config)
    assert Registry.in_runs_dir(runs).releases() == []
    review.label(review.sample[0]["id"], {"passed": True})  # 18 of 20: 90%
    record = release(run, review.config)
    assert record["evidence"]["sample_sha256"] == sample_hash(review.sample)
    assert record["evidence"]["pass_rate"] == 0.9 and record["bar"] == {"pass_rate": 0.9, "min_items": 20}
    [stored] = Registry.in_runs_dir(runs).releases()
    assert stored["run_id"] == "r1" and stored["evidence"]["item_ids"] == [i["id"] for i in review.sample]

    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "r1 * R" in capsys.readouterr().out
    assert main(["champion", "--runs-dir", str(runs)]) == 0
    assert "released " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="0 runs in .* match 'r9'"):
        main(["release", "r9", "--runs-dir", str(runs)])


def test_a_sample_edited_after_labelling_is_refused(runs):
    run = judged_run(runs, "r1", SCORES, sample_size=5)
    review = review_of(run)
    review.label(review.sample[0]["id"], {"passed": True})
    sample = read_jsonl(run / files.REVIEW_SAMPLE)
    write_jsonl(run / files.REVIEW_SAMPLE, sample[:2] + [sample[2] | {"answer": "edited"}] + sample[3:])
    with pytest.raises(DataError, match=rf"{run / files.REVIEW_SAMPLE}:3: .*content_sha256 .field 'answer'"):
        review_of(run)


def test_labels_given_on_another_sample_are_refused(runs):
    run = judged_run(runs, "r1", SCORES, sample_size=5)
    review = review_of(run)
    review.label(review.sample[0]["id"], {"passed": True})
    with pytest.raises(DataError, match="belongs to another sample"):
        LabelStore(run, review.sample, "f" * 64)
