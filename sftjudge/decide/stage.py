"""The decide stage: read the run and the champion, apply the rules (decide/rules.py), record, write the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.config_yaml import flatten
from sftjudge.decide.approval import AWAITING, WAITING_REASON
from sftjudge.decide.records import DecideRules, Decision, RunResult
from sftjudge.decide.report import write_report
from sftjudge.decide.rules import decide
from sftjudge.errors import RegistryError
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_jsonl
from sftjudge.run.registry import ChampionChanged, Registry, registry_url
from sftjudge.run.stage import StageContext, run_stage


def run_result(run: RunDir) -> RunResult:
    """A run's numbers, read back from its run directory (challenger or champion alike)."""
    import yaml

    manifest = run.manifest()
    sft = manifest["stages"]["sft"]["counts"]
    curate = manifest["stages"]["curate"]["counts"]
    metrics = json.loads((run / files.METRICS).read_text())
    epochs = read_jsonl(run / files.EPOCH_METRICS)
    judgments = read_jsonl(run / files.JUDGMENTS)
    data_report = json.loads((run / files.DATA_REPORT).read_text())
    flagged = data_report.get("contamination") or []
    settings = flatten(yaml.safe_load((run / files.CONFIG).read_text()))
    action = settings.get("data.contamination.action")
    return RunResult(
        run_id=run.run_id, judge_score=metrics["judge_score_mean"], train_loss=sft["train_loss_at_best"],
        val_loss=sft["best_val_loss"], test_fingerprint=curate["test_fingerprint"], judge_key=metrics["judge"],
        judge_problems=tuple(metrics["health"]["problems"]),
        judge_status=metrics["health"].get("status") or ("valid" if metrics["health"]["valid"] else "invalid"),
        item_scores={j["id"]: j["score"] for j in judgments if j.get("score") is not None},
        train_losses=tuple(e["train_loss"] for e in epochs), val_losses=tuple(e["val_loss"] for e in epochs),
        unparseable_rate=metrics["unparseable"] / max(metrics["items"], 1),
        contaminated=len(flagged) if action == "report" else 0, train_rows=curate.get("train", 0),
        settings=settings, regression=metrics.get("regression"),
        item_metrics={j["id"]: j.get("metrics") or {} for j in judgments},
        item_texts={j["id"]: {"answer": j["answer"], "reference": j["reference"]} for j in judgments
                    if isinstance(j.get("answer"), str) and isinstance(j.get("reference"), str)},
        dimensions=(metrics.get("dimensions") or {}).get("run") or {},
        baseline_items=({b["id"]: b for b in read_jsonl(run / files.BASELINE_JUDGMENTS)}
                        if (run / files.BASELINE_JUDGMENTS).is_file() else {}),
    )


def _result_from_registry(row: dict[str, Any]) -> RunResult:
    """When the champion's run directory is gone, the registry row still allows an unpaired comparison."""
    return RunResult(run_id=row["run_id"], judge_score=row["judge_score"], train_loss=row["train_loss_at_best"],
                     val_loss=row["best_val_loss"], test_fingerprint=row["test_fingerprint"], judge_key=row["judge"])


def champion_result(row: dict[str, Any] | None, run_id: str) -> RunResult | None:
    if not row or row["run_id"] == run_id:
        return None
    champion_dir = RunDir(Path(row["run_dir"]))
    if (champion_dir / files.JUDGMENTS).is_file():
        return run_result(champion_dir)
    return _result_from_registry(row)


def decide_and_record(run: RunDir, config: RunConfig) -> Decision:
    """Decide promote/hold/rollback against the registry's champion; write decision.json; record both atomically.

    A run the registry already holds keeps the decision it was recorded with: after a crash that followed the
    commit, deciding again would compare the run with itself. When another run moves the champion between this
    decision and its record (two runs finishing at once), the decision is made again against the new champion.
    """
    registry = Registry.in_runs_dir(config.runs_dir)
    recorded = registry.get(run.run_id)
    if recorded and (run / files.DECISION).is_file():
        earlier = json.loads((run / files.DECISION).read_text())
        if earlier.get("action") == recorded["decision"]:
            return Decision(**earlier)
    for _ in range(20):
        champion_row = registry.champion()
        decision, challenger = _decide(run, config, champion_row)
        if decision.action == "promote" and config.decide.require_approval:
            decision.action = AWAITING
            decision.reasons.append(WAITING_REASON)
        atomic_write_json(run / files.DECISION, decision.to_json())
        try:
            registry.record(_registry_row(run, config, decision, challenger), promote=decision.action == "promote",
                            expected_champion=champion_row["run_id"] if champion_row else None)
            return decision
        except ChampionChanged:
            continue  # another run was promoted meanwhile: decide again, against it
    raise RuntimeError(f"run {run.run_id}: the champion kept changing while deciding; run decide again")


def _decide(run: RunDir, config: RunConfig, champion_row: dict[str, Any] | None) -> tuple[Decision, RunResult]:
    challenger = run_result(run)
    champion = champion_result(champion_row, run.run_id)
    metrics = json.loads((run / files.METRICS).read_text())
    measured_noise = (metrics.get("noise") or {}).get("noise_floor") or 0.0
    decision = decide(challenger, champion, DecideRules.from_config(config, measured_noise))
    if missing := champion_dir_missing(champion_row):
        decision.warnings.append(missing)
    return decision, challenger


def champion_dir_missing(champion_row: dict[str, Any] | None) -> str | None:
    """A warning when the champion's run directory is gone (its answers and per-item scores with it)."""
    if not champion_row or not champion_row.get("run_dir") or Path(champion_row["run_dir"]).is_dir():
        return None  # no champion, a row recorded without a directory, or the directory is there
    return (f"the champion's run directory {champion_row['run_dir']} is gone: compared on its registry numbers only "
            f"(no paired items, pairwise judging or noise floor), and its checkpoint cannot be served; restore it "
            f"or promote another run (`sftjudge promote RUN_ID`)")


def _registry_row(run: RunDir, config: RunConfig, decision: Decision, challenger: RunResult) -> dict[str, Any]:
    manifest = run.manifest()
    sft = json.loads((run / files.SFT_SUMMARY).read_text())
    metrics = json.loads((run / files.METRICS).read_text())
    return {
        "run_id": run.run_id, "name": manifest["name"], "created_at": manifest["created_at"],
        "base_model": config.sft.base_model, "method": config.sft.method,
        "dataset_sha256": manifest["stages"]["curate"]["counts"]["input_sha256"],
        "test_fingerprint": challenger.test_fingerprint, "template_fingerprint": sft["template_fingerprint"],
        "epochs": config.sft.epochs, "learning_rate": config.sft.learning_rate, "batch_size": config.sft.batch_size,
        "best_epoch": sft["best_epoch"], "best_val_loss": challenger.val_loss,
        "train_loss_at_best": challenger.train_loss, "judge": challenger.judge_key,
        "judge_score": challenger.judge_score, "exact_match": metrics["cheap"].get("exact_match"),
        "decision": decision.action, "reasons": decision.reasons, "checkpoint": sft["best_checkpoint"],
        "run_dir": str(run.path.resolve()),
    }


def decide_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Compare with the champion, record the run and (maybe) the new champion, then write report.md.

    The report is rebuilt from the run directory after the stage is recorded, so it shows the finished run and a
    failure while writing it is retried without deciding twice.
    """
    run_stage("decide", run_path, config, _decide_and_report)
    run = RunDir(Path(run_path))
    write_report(run)
    return run.stage_info("decide")


def _decide_and_report(ctx: StageContext) -> None:
    decision = decide_and_record(ctx.run, ctx.config)
    ctx.run.update_manifest(decision=decision.to_json())
    ctx.record.outputs = {"decision": files.DECISION, "report": files.REPORT}
    ctx.record.counts = {"action": decision.action, "champion_before": decision.champion_before}


def rebuild_registry(runs_dir: str | Path) -> tuple[Registry, list[str]]:
    """A new registry from the decided runs in `runs_dir`, replayed in creation order (promotions included); returns
    it and the runs left out, each with why.

    Every run is read before anything is written; one that cannot be read (a truncated manifest, a damaged
    decision) is left out and named, never a reason to stop half-way. The new registry is built beside the old one
    and swapped in whole; the old file is kept as `registry.sqlite.damaged` (`.damaged-2`, ... when one is there:
    a backup is never overwritten). Manual promotions and rollbacks are not in the run directories, so the champion
    is the last run a decision (or an approval) promoted; releases are restored from each run's review/release.json.
    """
    import os

    url = registry_url(runs_dir)
    if url.get_backend_name() != "sqlite":
        raise RegistryError("registry rebuild writes the SQLite registry of a runs directory; a PostgreSQL registry "
                            "($SFTJUDGE_REGISTRY_URL) is restored from the database's own backups")
    runs_dir, target = Path(runs_dir), Path(url.database)
    readable, skipped = _readable_runs(runs_dir)
    building = target.with_name(f".{target.name}.rebuilding-{os.getpid()}")
    building.unlink(missing_ok=True)
    registry = Registry(building)
    for run, config, decision, result, _ in readable:
        registry.record(_registry_row(run, config, decision, result), promote=decision.action == "promote")
    for release in sorted((r for *_, r in readable if r), key=lambda r: r["released_at"]):
        registry.restore_release(release)  # each kept beside its run (sftjudge release)
    registry.engine.dispose()
    if target.exists():
        target.replace(_free_name(target.with_name(target.name + ".damaged")))
    building.replace(target)
    return Registry(target), skipped


def _readable_runs(runs_dir: Path) -> tuple[list[tuple], list[str]]:
    """(run, config, decision, result, release or None) of every decided run that reads whole, in creation order;
    and "run: why" for each that does not."""
    from sftjudge.config_yaml import load_config
    from sftjudge.errors import UserError

    readable, skipped = [], []
    for path in sorted(runs_dir.glob(f"*/{files.DECISION}")):
        run = RunDir(path.parent)
        try:
            created = run.manifest()["created_at"]
            release = (json.loads((run / files.REVIEW_RELEASE).read_text())
                       if (run / files.REVIEW_RELEASE).is_file() else None)
            entry = (run, load_config(run / files.CONFIG), Decision(**json.loads(path.read_text())),
                     run_result(run), release)
        except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
            skipped.append(f"{run.path.name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        readable.append(((created, run.run_id), entry))
    return [entry for _, entry in sorted(readable, key=lambda pair: pair[0])], skipped


def _free_name(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
