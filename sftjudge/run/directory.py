"""One run, one directory: `runs/<run_id>/` with the resolved config and a manifest of every stage.

The manifest is the run's source of truth: each stage records status, timings, outputs and counts. A stage that
is marked completed is not redone when the run is retried or re-run (see `RunDir.stage`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftjudge.errors import RunFileError
from sftjudge.run import files
from sftjudge.run.io import atomic_write_json, atomic_write_text

STAGES = ("curate", "sft", "generate", "judge", "decide")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique id: UTC time to the second plus 4 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class StageRecord:
    """What a stage hands back to the manifest: output paths (relative to the run) and counts."""

    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)  # model stages: planned and measured (runtime/memory.py)


class RunDir:
    """A run directory and its manifest. Safe to reopen: the manifest on disk is re-read on every access."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / files.MANIFEST

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, runs_dir: Path, config_yaml: str, name: str, run_id: str | None = None) -> "RunDir":
        """Make `runs_dir/<run_id>/` with config.yaml and a manifest listing every stage as pending."""
        run = cls(Path(runs_dir) / (run_id or new_run_id()))
        run.path.mkdir(parents=True, exist_ok=False)
        atomic_write_text(run / files.CONFIG, config_yaml)
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
        """The manifest; RunFileError naming it when it is damaged (truncated by a full disk, edited by hand) or is
        a symbolic link (it would show another file as this run, and the next write would replace the link)."""
        if self.manifest_path.is_symlink():
            raise RunFileError(f"{self.manifest_path} is a symbolic link (to {os.readlink(self.manifest_path)}); a "
                               f"run's manifest is a file of its own: copy the file it points to in its place, or "
                               f"move the run directory {self.path} away")
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunFileError(f"{self.manifest_path} is damaged ({exc}); restore it from a backup, or move the run "
                               f"directory {self.path} away") from None
        if not isinstance(manifest, dict):
            raise RunFileError(f"{self.manifest_path} holds no manifest (a JSON object); restore it from a backup")
        return manifest

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        atomic_write_json(self.manifest_path, manifest)

    def interrupted_stages(self) -> list[str]:
        """Stages marked running whose process, on this host, is gone."""
        return [name for name, info in self.manifest()["stages"].items()
                if info.get("status") == "running" and info.get("host") == socket.gethostname()
                and not _alive(info.get("pid"))]

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
        # Who runs it: a stage left "running" by a process that no longer exists was interrupted (kill -9, a
        # lost worker), and `sftjudge show` can say so instead of "running" forever.
        self._set_stage(stage, {"status": "running", "started_at": _now(), "attempts": attempts,
                                "pid": os.getpid(), "host": socket.gethostname()})
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
            } | ({"memory": record.memory} if record.memory else {}),
        )


def _alive(pid: int | None) -> bool:
    if not pid:
        return True  # recorded before pids were: cannot tell, so do not claim it died
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
