"""What every CLI command shares: finding a run by id prefix and opening the registry."""

from __future__ import annotations

from pathlib import Path

from sftjudge.run import files


def runs_folder(runs_dir: str) -> str:
    """`--runs-dir` as given, unless it is the filesystem's root or a system folder (ends the command)."""
    from sftjudge.config_base import refuse_system_dir

    try:
        return refuse_system_dir(runs_dir, "--runs-dir")
    except ValueError as exc:
        raise SystemExit(f"sftjudge: {exc}") from None


def find_run(runs_dir: str, run_id: str) -> Path:
    runs_folder(runs_dir)
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise SystemExit(f"sftjudge: {run_id!r} is not a run id (a run directory's name in {runs_dir}/, or a unique "
                         f"prefix of one)")
    matches = sorted(p for p in Path(runs_dir).glob(f"{run_id}*") if (p / files.MANIFEST).is_file())
    if len(matches) != 1:
        raise SystemExit(f"sftjudge: {len(matches)} runs in {runs_dir}/ match {run_id!r}"
                         + (f": {', '.join(p.name for p in matches)}" if matches else ""))
    return matches[0]


def registry(runs_dir: str):
    """The registry every command uses: $SFTJUDGE_REGISTRY_URL when set, else `<runs_dir>/registry.sqlite` (the
    same resolution as the stages). A URL it cannot use ends the command with the reason, never the password."""
    import os

    from sftjudge.run.registry import Registry
    from sftjudge.run.registry_db import ENV_URL

    runs_folder(runs_dir)
    if not os.environ.get(ENV_URL) and not Path(runs_dir).is_dir():
        # Opening the registry would create the folder and an empty registry: a typo would look like "no runs".
        raise SystemExit(f"sftjudge: no runs directory {runs_dir}/ (run a cycle first, or pass --runs-dir)")
    try:
        return Registry.in_runs_dir(runs_dir)
    except (ValueError, ModuleNotFoundError) as exc:
        raise SystemExit(f"sftjudge: {exc}") from None
