"""One run, one directory: `runs/<run_id>/` with the resolved config and a manifest of every stage.

The manifest is the run's source of truth: each stage records status, timings, outputs and counts. A stage that
is marked completed is not redone when the run is retried or re-run (see `RunDir.stage`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STAGES = ("curate", "sft", "generate", "judge", "decide")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            # ENOSPC from write or fsync names no file: say which one was not written (the old one is intact).
            raise OSError(exc.errno, f"{exc.strerror or exc}: could not write {path} (disk full or not "
                                     f"writable?); the previous version, if any, is unchanged") from exc
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it is renamed to `final` in one step.

    A crash leaves only a `.tmp-*` directory behind, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique id: UTC time to the second plus 4 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class StageRecord:
    """What a stage hands back to the manifest: output paths (relative to the run) and counts."""

    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """A run directory and its manifest. Safe to reopen: the manifest on disk is re-read on every access."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, runs_dir: Path, config_yaml: str, name: str, run_id: str | None = None) -> "RunDir":
        """Make `runs_dir/<run_id>/` with config.yaml and a manifest listing every stage as pending."""
        run = cls(Path(runs_dir) / (run_id or new_run_id()))
        run.path.mkdir(parents=True, exist_ok=False)
        atomic_write_text(run / "config.yaml", config_yaml)
        atomic_write_json(
            run.manifest_path,
            {
                "run_id": run.run_id,
                "name": name,
                "created_at": _now(),
                "status": "running",
                "stages": {stage: {"status": "pending"} for stage in STAGES},
            },
        )
        return run

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        atomic_write_json(self.manifest_path, manifest)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.manifest()["stages"][stage]

    def is_completed(self, stage: str) -> bool:
        return self.stage_info(stage).get("status") == "completed"

    def _set_stage(self, stage: str, info: dict[str, Any]) -> None:
        manifest = self.manifest()
        manifest["stages"][stage] = info
        if all(s.get("status") == "completed" for s in manifest["stages"].values()):
            manifest["status"] = "completed"
        elif info.get("status") == "failed":
            manifest["status"] = "failed"
        else:
            manifest["status"] = "running"
        atomic_write_json(self.manifest_path, manifest)

    @contextlib.contextmanager
    def stage(self, stage: str) -> Iterator[StageRecord]:
        """Record a stage's start, end, status, outputs and counts around the `with` body.

        Callers check `is_completed(stage)` first; this context manager always runs the body.
        """
        started = time.time()
        previous = self.stage_info(stage)
        attempts = int(previous.get("attempts", 0)) + 1
        self._set_stage(stage, {"status": "running", "started_at": _now(), "attempts": attempts})
        record = StageRecord()
        try:
            yield record
        except BaseException as exc:
            self._set_stage(
                stage,
                {
                    "status": "failed",
                    "attempts": attempts,
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "seconds": round(time.time() - started, 2),
                },
            )
            raise
        self._set_stage(
            stage,
            {
                "status": "completed",
                "attempts": attempts,
                "finished_at": _now(),
                "seconds": round(time.time() - started, 2),
                "outputs": record.outputs,
                "counts": record.counts,
            },
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
