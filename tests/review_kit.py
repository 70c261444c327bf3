"""A judged run directory without any model: written by hand for the review tests (unit and browser)."""

from __future__ import annotations

import json
from pathlib import Path

from sftjudge.config import RunConfig
from sftjudge.config_yaml import dump_config
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import write_jsonl
from sftjudge.run.registry import Registry


def judged_run(runs: Path, run_id: str, scores: list[float], *, champion: Path | None = None,
               outcomes: list[str] | None = None, **review) -> RunDir:
    """A run with generations, judgments (these scores), metrics and - with a champion - pairwise outcomes."""
    config = RunConfig(runs_dir=str(runs), review=review or {})
    run = RunDir.create(runs, dump_config(config), run_id, run_id=run_id)
    ids = [f"item-{i:02d}" for i in range(len(scores))]
    write_jsonl(run / files.GENERATIONS, [
        {"id": i, "instruction": f"Question {i}: what is {n} plus {n}?", "reference": str(2 * n),
         "text": f"{2 * n if s >= 5 else 'I do not know'} ({run_id})", "prompt": i, "params": None}
        for n, (i, s) in enumerate(zip(ids, scores))])
    write_jsonl(run / files.JUDGMENTS, [
        {"id": i, "score": s, "metrics": {"similarity": s / 10, "token_f1": s / 10, "exact_match": 0.0}}
        for i, s in zip(ids, scores)])
    metrics = {"judge": "reference-score@test#abc", "items": len(ids), "judge_score_mean": sum(scores) / len(scores)}
    if champion is not None:
        metrics["pairwise"] = {"champion_run_dir": str(champion)}
        write_jsonl(run / files.PAIRWISE, [{"id": i, "outcome": o} for i, o in zip(ids, outcomes)])
    (run / files.METRICS).write_text(json.dumps(metrics))
    return run


def isolated_runs(tmp_path: Path, monkeypatch) -> Path:
    """A runs directory of the test's own, with a model cache and registry no other test sees."""
    monkeypatch.delenv("SFTJUDGE_REGISTRY_URL", raising=False)
    monkeypatch.setenv("SFTJUDGE_HOME", str(tmp_path / "home"))
    return tmp_path / "runs"


def review_of(run: RunDir):
    """The review server's state for `run`, as `sftjudge review` builds it."""
    from sftjudge.config_yaml import load_config
    from sftjudge.review.server import Review

    return Review(run, load_config(run / files.CONFIG))


def make_champion(runs: Path, run: RunDir) -> None:
    Registry.in_runs_dir(runs).record({"run_id": run.run_id, "run_dir": str(run.path)}, promote=True)
