"""Disk full and unwritable run directories: a clear error naming the file, and never a half-written file,
checkpoint or registry row (temp file/dir + fsync + rename; one SQLite transaction)."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from sftjudge.config_yaml import load_config
from sftjudge.decide.stage import decide_stage
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.registry import Registry
from sftjudge.run.stage import start_run

from .faultkit import AtPointerWrite, clone_run, fault_config, set_scores


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_the_manifest_keeps_the_old_one_and_names_the_file(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    with run.stage("curate") as record:
        record.counts = {"rows": 3}
    before = (run / files.MANIFEST).read_bytes()
    monkeypatch.setattr(os, "fsync", no_space)  # the bytes were written; making them durable fails
    with pytest.raises(OSError) as info:
        run.update_manifest(decision={"action": "promote"})
    assert info.value.errno == errno.ENOSPC and str(run / files.MANIFEST) in str(info.value)
    assert (run / files.MANIFEST).read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "manifest.json"]  # no temp file left


def test_unwritable_run_directory_fails_the_stage_clearly_and_changes_nothing(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    before = (run / files.MANIFEST).read_bytes()

    def read_only(*args, dir=None, **kwargs):  # what mkstemp raises in a directory we may not write
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(PermissionError) as info:
        with run.stage("curate"):
            pytest.fail("the stage body must not run when its start cannot be recorded")
    assert str(run.path) in str(info.value)
    assert (run / files.MANIFEST).read_bytes() == before


def test_runs_dir_that_cannot_exist_is_refused_before_any_work(tmp_path, tiny_data):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the runs directory should go")
    config = fault_config(blocker / "runs", tiny_data)
    with pytest.raises(OSError) as info:
        start_run(config, run_id="r1")
    assert str(blocker) in str(info.value)
    assert blocker.read_text().startswith("a file")


SETTINGS = dict(method="lora", epochs=2, learning_rate=5e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=4,
                grad_accum=1, max_seq_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                target_modules=("q_proj", "v_proj"), precision="fp32", seed=0)


@pytest.mark.model
def test_disk_full_while_saving_a_checkpoint_leaves_no_half_checkpoint_and_training_resumes(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    import torch
    from helpers import example

    from sftjudge.config import SFTConfig
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import epoch_checkpoints
    from sftjudge.train.loop import TrainData, train

    rows = [example(i, f"Message {i}: my router is broken", '{"intent": "bug_report"}') for i in range(8)]
    val = [example(100 + i, f"Message {i}: refund please", '{"intent": "refund"}') for i in range(2)]
    settings = SFTConfig(**SETTINGS)
    real_save = torch.save

    def fill_the_disk_at_epoch_2(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and len(obj.get("history", [])) == 2:
            Path(path).write_bytes(b"\x80\x02half a training state")  # some bytes made it before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    checkpoints = tmp_path / files.CHECKPOINTS
    model, tok = load_causal_lm(str(tiny_model_dir))
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", fill_the_disk_at_epoch_2)
        with pytest.raises(OSError, match="No space left"):
            train(model, tok, TrainData(train=rows, val=val), settings, checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-1"]  # no epoch-2, no temp directory
    assert list(epoch_checkpoints(checkpoints)) == [1]

    model, tok = load_causal_lm(str(tiny_model_dir))  # space freed: the rerun continues after epoch 1
    resumed = train(model, tok, TrainData(train=rows, val=val), settings, checkpoints)
    assert resumed.resumed_from_epoch == 1 and [m.epoch for m in resumed.epochs] == [1, 2]
    assert max(epoch_checkpoints(checkpoints)) == 2  # (epoch 1 may be pruned: best and last are kept)


def test_a_full_disk_under_the_registry_records_nothing_and_says_so(tmp_path, monkeypatch):
    registry = Registry.in_runs_dir(tmp_path)
    registry.record({"run_id": "a", "created_at": "1", "reasons": ["first"]}, promote=True)
    real_connect = Registry._connect

    def full_disk(self):  # SQLite itself reports SQLITE_FULL: no page may be added to the file
        db = real_connect(self)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr(Registry, "_connect", full_disk)
    with pytest.raises(sqlite3.OperationalError) as info:
        registry.record({"run_id": "b", "created_at": "2", "reasons": ["long " * 50_000]}, promote=True)
    assert "database or disk is full" in str(info.value) and str(registry.path) in str(info.value)
    monkeypatch.undo()
    assert registry.champion()["run_id"] == "a" and [r["run_id"] for r in registry.runs()] == ["a"]
    registry.record({"run_id": "b", "created_at": "2", "reasons": ["long " * 50_000]}, promote=True)
    assert registry.champion()["run_id"] == "b"


def disk_full():
    raise sqlite3.OperationalError("database or disk is full")


def test_disk_full_at_the_pointer_write_fails_decide_and_leaves_no_registry_row(base_run, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    a = clone_run(base_run, runs, "a", reset=("decide",))
    b = clone_run(base_run, runs, "b", reset=("decide",))
    set_scores(a, [4.0, 4.2, 3.8, 4.1, 3.9, 4.0])
    set_scores(b, [7.0, 7.2, 6.8, 7.1, 6.9, 7.0])
    config = load_config(a / files.CONFIG, [f"runs_dir={runs}"])
    decide_stage(str(a), config)
    real_connect = Registry._connect
    with monkeypatch.context() as patch:
        patch.setattr(Registry, "_connect", lambda self: AtPointerWrite(real_connect(self), disk_full))
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            decide_stage(str(b), config)
    registry = Registry.in_runs_dir(runs)
    assert registry.champion()["run_id"] == "a"
    assert registry.get("b") is None  # its row was inserted in the same transaction, and rolled back
    failed = RunDir(b).stage_info("decide")
    assert failed["status"] == "failed" and "registry.sqlite" in failed["error"] and "disk is full" in failed["error"]
    assert decide_stage(str(b), config)["counts"] == {"action": "promote", "champion_before": "a"}
    assert json.loads((b / files.DECISION).read_text())["champion_before"] == "a"
