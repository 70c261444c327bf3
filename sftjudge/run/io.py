"""Crash-safe file writes and JSONL reading: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would make every run file private
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
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from a teammate or another worker
        yield tmp
        follow_umask(tmp)
        _replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_directory(tmp: Path, final: Path) -> None:
    """Move the complete directory `tmp` (written elsewhere on the same file system) to `final` in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    follow_umask(tmp)
    _replace_directory(tmp, final)


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the permissions the umask allows (executable bits kept as they are).

    safetensors' `save_file` creates its files 0600 whatever the umask, so adapters, exports and prepared models
    on storage shared between workers (or a teammate) could not be read by anyone else.
    """
    umask = current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, (0o666 | (path.stat().st_mode & 0o111)) & ~umask)


def _replace_directory(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what is there, also when another writer replaces it at the same moment.

    A directory cannot be renamed over a non-empty one, so the old one is first renamed aside (atomic) and removed
    after; when another writer's copy lands in between, it is moved aside in turn. The last writer wins, whole.
    """
    for _ in range(50):
        aside = final.with_name(f".old-{final.name}-{os.getpid()}-{id(tmp)}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # another writer's copy arrived between our two renames: move it aside too
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"could not replace {final}: other writers kept replacing it")


def current_umask() -> int:
    """The process umask, read without changing it (Linux reports it in /proc; elsewhere set and restore)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_json_if_present(path: Path) -> Any:
    """A JSON file's content, or None when there is no such file (an optional output not written yet)."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def numbered_json_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a user's JSONL file; `error` names file and line.

    Raises `error` for a line that is not JSON; what each value must be is the caller's to check."""
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`'s sibling `.lock` file: work shared by every run (a baseline, anchors),
    asked for by two runs at once, is done by the first while the second waits and then finds it cached."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
