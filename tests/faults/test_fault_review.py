"""Human review on a real (tiny) run: labels imported from a file reach the report, `sftjudge show` and the
calibration kept per judge; a bad label file changes nothing; release goes through the registry."""

from __future__ import annotations

import csv
import json

import pytest

from sftjudge.cli import main
from sftjudge.config_yaml import load_config
from sftjudge.decide.stage import decide_stage
from sftjudge.judge.calibrate import load_calibration
from sftjudge.run import files
from sftjudge.run.io import read_jsonl
from sftjudge.run.registry import Registry

from .faultkit import clone_run


def fill(path, passed: str, grade: str) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(passed=passed, grade=grade)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_imported_labels_reach_the_report_show_and_calibration_and_allow_a_release(
        base_run, tmp_path, sftjudge_home, capsys):
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "reviewed", reset=("decide",))
    config = load_config(run_path / files.CONFIG, [f"runs_dir={runs}"])
    decide_stage(str(run_path), config)
    report = (run_path / files.REPORT).read_text()
    assert "human review: none yet, so the judge is not yet calibrated against a person" in report

    labels = tmp_path / "labels.csv"
    args = ["review", "reviewed", "review.min_items=3", "review.release_pass_rate=0.8", "--runs-dir", str(runs)]
    assert main([*args, "--export", str(labels)]) == 0
    rows = fill(labels, "pass", "4")
    before = (run_path / files.REPORT).read_text()

    bad = tmp_path / "bad.csv"
    with open(labels) as good, open(bad, "w") as out:
        out.write(good.read().replace(rows[1]["id"], "no-such-item", 1))
    assert main([*args, "--import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: field 'id' is 'no-such-item'" in err
    assert not (run_path / files.REVIEW_LABELS).exists() and (run_path / files.REPORT).read_text() == before

    assert main([*args, "--import", str(labels)]) == 0
    out = capsys.readouterr().out
    assert f"imported {len(rows)} labels" in out and "pass/fail (judge passes at >= 7.0)" in out
    report = (run_path / files.REPORT).read_text()
    assert "## Human review" in report and f"of {len(rows)} items" in report
    assert main(["show", "reviewed", "--runs-dir", str(runs)]) == 0
    assert "human review: " in capsys.readouterr().out

    judge = json.loads((run_path / files.METRICS).read_text())["judge"]
    stored = load_calibration(sftjudge_home, judge)["human review"]
    assert stored["items"] == len(rows) and stored["run"] == "reviewed"

    assert json.loads((run_path / files.DECISION).read_text())["action"] == "promote"
    assert main(["release", "reviewed", "review.min_items=3", "--runs-dir", str(runs)]) == 0
    assert Registry.in_runs_dir(runs).releases()[0]["evidence"]["passed"] == len(rows)
    assert "released " in (run_path / files.REPORT).read_text()
    assert len(read_jsonl(run_path / files.REVIEW_LABELS)) == len(rows)


@pytest.mark.parametrize("change, message", [({"grade": "9"}, "field 'grade' is 9, outside 1-5"),
                                             ({"passed": "perhaps"}, "field 'passed' is 'perhaps'")])
def test_a_bad_label_is_refused_with_its_line_and_field(base_run, tmp_path, capsys, change, message):
    runs = tmp_path / "runs"
    clone_run(base_run, runs, "reviewed", reset=("decide",))
    labels = tmp_path / "labels.jsonl"
    assert main(["review", "reviewed", "--runs-dir", str(runs), "--export", str(labels)]) == 0
    rows = read_jsonl(labels)
    rows[-1].update(change)
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["review", "reviewed", "--runs-dir", str(runs), "--import", str(labels)]) == 2
    assert f"{labels}:{len(rows)}: {message}" in capsys.readouterr().err
