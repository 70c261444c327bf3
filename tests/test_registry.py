import threading

import pytest

from sftjudge.registry import Registry


def row(run_id, score=5.0, created="2026-01-01"):
    return {"run_id": run_id, "created_at": created, "judge_score": score, "reasons": ["r"], "decision": "promote"}


def test_promotion_moves_champion_with_history(tmp_path):
    reg = Registry.in_runs_dir(tmp_path)
    reg.record(row("a", created="1"), promote=True)
    reg.record(row("b", created="2"), promote=False)
    assert reg.champion()["run_id"] == "a"
    reg.record(row("c", created="3"), promote=True)
    assert reg.champion()["run_id"] == "c"
    assert [h["previous_run_id"] for h in reg.champion_history()] == [None, "a"]
    assert [r["run_id"] for r in reg.runs()] == ["a", "b", "c"]
    assert reg.get("b")["reasons"] == ["r"]


def test_crash_inside_record_leaves_champion_and_runs_intact(tmp_path):
    reg = Registry.in_runs_dir(tmp_path)
    reg.record(row("a"), promote=True)
    bad = row("b")
    bad["judge_score"] = object()  # sqlite cannot bind this: the transaction fails midway
    with pytest.raises(Exception):
        reg.record(bad, promote=True)
    assert reg.champion()["run_id"] == "a"
    assert [r["run_id"] for r in reg.runs()] == ["a"]


def test_concurrent_promotions_serialise(tmp_path):
    reg = Registry.in_runs_dir(tmp_path)
    errors = []

    def promote(i):
        try:
            Registry.in_runs_dir(tmp_path).record(row(f"r{i}", created=str(i)), promote=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = reg.champion_history()
    assert len(history) == 8 and len(reg.runs()) == 8
    # each promotion saw the one before it: the chain of previous ids is unbroken
    assert [h["previous_run_id"] for h in history[1:]] == [h["run_id"] for h in history[:-1]]


def test_manual_promotion_and_rollback_restore_the_previous_champion(tmp_path):
    reg = Registry.in_runs_dir(tmp_path)
    reg.record(row("a", created="1"), promote=True)
    reg.record(row("b", created="2"), promote=False)
    assert reg.set_champion("b", "manual") == "a"
    assert reg.champion()["run_id"] == "b"
    assert reg.champion_history()[-1]["how"] == "manual"
    assert reg.rollback() == ("b", "a")
    assert reg.champion()["run_id"] == "a"
    with pytest.raises(KeyError):
        reg.set_champion("nope", "manual")


def test_rollback_without_history_is_refused(tmp_path):
    reg = Registry.in_runs_dir(tmp_path)
    reg.record(row("a"), promote=True)
    with pytest.raises(KeyError, match="no earlier champion"):
        reg.rollback()
