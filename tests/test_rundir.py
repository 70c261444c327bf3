import pytest

from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_directory, atomic_write_text


def test_stage_records_completion_and_failure(tmp_path):
    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    with run.stage("curate") as record:
        record.counts = {"rows": 3}
    assert run.is_completed("curate")
    assert run.stage_info("curate")["counts"] == {"rows": 3}
    with pytest.raises(RuntimeError):
        with run.stage("sft"):
            raise RuntimeError("boom")
    info = run.stage_info("sft")
    assert info["status"] == "failed" and "boom" in info["error"]
    assert run.manifest()["status"] == "failed"
    with run.stage("sft"):
        pass
    assert run.stage_info("sft")["attempts"] == 2


def test_run_ids_are_unique(tmp_path):
    a = RunDir.create(tmp_path, "", "x")
    b = RunDir.create(tmp_path, "", "x")
    assert a.run_id != b.run_id


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            (tmp / "weights").write_text("half")
            raise ValueError("disk full")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / files.MANIFEST
    atomic_write_text(path, "old")

    def explode(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr("os.replace", explode)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
