import json
from pathlib import Path

import pytest
from helpers import write_lines

from sftjudge.cli import main
from sftjudge.errors import CalibrationError
from sftjudge.judge.calibrate import load_labels, pointwise_agreement

REPO = Path(__file__).resolve().parent.parent


def test_shipped_label_files_load():
    kind, items = load_labels(REPO / "data/sample/calibration.jsonl")
    assert kind == "pointwise" and len(items) == 32 and {i["human_score"] for i in items} == {1, 3, 6, 10}
    kind, items = load_labels(REPO / "data/sample/calibration_pairwise.jsonl")
    assert kind == "pairwise" and {i["human_winner"] for i in items} == {"A", "B", "C"}


@pytest.mark.parametrize("rows, message", [
    (['{"instruction": "q"'], r"d.jsonl:1: invalid JSON"),
    ([{"instruction": "q", "reference": "r", "human_score": 3}], r"d.jsonl:1: field 'answer' missing"),
    ([{"instruction": "q"}], "needs a human_score"),
    ([{"instruction": "q", "reference": "r", "answer": "a", "human_score": 3},
      {"instruction": "q", "reference": "r", "answer_a": "a", "answer_b": "b", "human_winner": "A"}], "mixes"),
])
def test_bad_label_files_name_line_and_field(tmp_path, rows, message):
    with pytest.raises(CalibrationError, match=message):
        load_labels(write_lines(tmp_path / "d.jsonl", rows))


def test_rank_agreement_detects_an_inverted_judge():
    human = [1, 3, 6, 10, 1, 3, 6, 10]
    assert pointwise_agreement(human, [h + 0.5 for h in human])["spearman"] == 1.0
    assert pointwise_agreement(human, [11 - h for h in human])["spearman"] == -1.0
    assert pointwise_agreement(human, [None] * 8)["spearman"] is None


@pytest.mark.model
def test_cli_calibrates_and_stores_per_judge(tiny_model_dir, sftjudge_home, capsys):
    args = ["judge", "calibrate", "--config", str(REPO / "configs/tiny.yaml"),
            str(REPO / "data/sample/calibration.jsonl"), f"judge.judges_dir={REPO / 'judges'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out[:out.rindex("}") + 1])
    assert result["kind"] == "pointwise" and result["items"] == 32
    assert -1.0 <= result["spearman"] <= 1.0
    stored = json.loads(next((sftjudge_home / "calibration").glob("reference-score__tiny#*.json")).read_text())
    assert stored["pointwise"]["items"] == 32
    pair_args = args[:4] + [str(REPO / "data/sample/calibration_pairwise.jsonl")] + args[5:]
    assert main(pair_args) == 0
    assert "swap_consistency" in capsys.readouterr().out
