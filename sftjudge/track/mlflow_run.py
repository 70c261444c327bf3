"""Each cycle as one MLflow run, and the champion in MLflow's Model Registry.

After the decide stage, the run's numbers go to MLflow: the flattened config as params; train and validation loss
and perplexity per epoch as step metrics; the judge score (raw, % of reference quality, per dimension), the cheap
metrics, the pairwise win rate and the alignment tax as metrics; the decision and its reasons as tags; the report,
plots, judgments and data report as artifacts. On a promotion the chosen checkpoint is registered as a new version
of `tracking.registered_model` and the `champion` alias moves to it (the version it leaves keeps `previous`).

sftjudge's own registry stays the source of truth: tracking runs after the decision is recorded and only reads the
run directory. The MLflow run carries the tag `sftjudge.run_id`, so a retried tracking task finds and completes the
same MLflow run instead of starting another. The default store is SQLite under the runs directory
(`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows everything without a server); `tracking.uri` takes
a server URL. One logging attempt asks the server once per request, within `tracking.timeout_s`: MLflow's own
client retries each request 7 times with a doubling backoff (4 min 35 s against a dead server, measured), on top of
`tracking.retries`; here it does so only when MLFLOW_HTTP_REQUEST_MAX_RETRIES is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.config_yaml import flatten
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_json_if_present

RUN_TAG = "sftjudge.run_id"
ARTIFACTS = (files.REPORT, files.REPORT_HTML, files.LOSS_CURVE, files.SCORE_HIST, files.JUDGMENTS, files.METRICS,
             files.DECISION, files.DATA_REPORT, files.SFT_SUMMARY)


def tracking_uri(config: RunConfig) -> str:
    """tracking.uri, or SQLite in the runs directory."""
    return config.tracking.uri or f"sqlite:///{Path(config.runs_dir).resolve() / 'mlflow.db'}"


@contextmanager
def one_try_per_request(config: RunConfig) -> Iterator[None]:
    """MLflow's HTTP client without retries of its own, each request within tracking.timeout_s (what the user
    set in MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT wins)."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(config.tracking.timeout_s)}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def registered_model(config: RunConfig) -> str:
    return config.tracking.registered_model or f"sftjudge-{config.name}"


def params_of(config: RunConfig) -> dict[str, str]:
    """The flattened config as MLflow params (values as text, within MLflow's 6000-character limit)."""
    return {key: (json.dumps(value) if isinstance(value, (list, dict)) else str(value))[:6000]
            for key, value in flatten(config.model_dump(mode="json")).items()}


def metrics_of(run: RunDir) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    """(per-epoch metrics as {name: [(epoch, value)]}, single metrics) read from the run directory."""
    epochs: dict[str, list[tuple[int, float]]] = {}
    sft = read_json_if_present(run.path / files.SFT_SUMMARY) or {}
    for epoch in sft.get("epochs", []):
        for name in ("train_loss", "val_loss", "train_ppl", "val_ppl"):
            if isinstance(epoch.get(name), (int, float)):
                epochs.setdefault(name, []).append((int(epoch["epoch"]), float(epoch[name])))
    metrics = read_json_if_present(run.path / files.METRICS) or {}
    single: dict[str, Any] = {"judge_score": metrics.get("judge_score_mean"),
                              "judge_score_normalised": (metrics.get("normalised") or {}).get("run"),
                              "best_epoch": sft.get("best_epoch"), "test_loss": sft.get("test_loss")}
    single |= {f"cheap.{k}": v for k, v in (metrics.get("cheap") or {}).items()}
    single |= {f"dimension.{k}": v for k, v in ((metrics.get("dimensions") or {}).get("run") or {}).items()}
    pairwise = metrics.get("pairwise") or {}
    single["win_rate_vs_champion"] = pairwise.get("win_rate")
    regression = metrics.get("regression") or {}
    single["regression_mean"] = regression.get("run_mean")
    single |= {f"alignment_tax.{k}": v.get("tax") for k, v in (regression.get("categories") or {}).items()}
    return epochs, {k: float(v) for k, v in single.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def track_run(run_path: str | Path, config: RunConfig) -> dict[str, Any]:
    """Log the run to MLflow (idempotent per run) and, on a promotion, register the champion; return where."""
    with one_try_per_request(config):
        return _track(run_path, config)


def _track(run_path: str | Path, config: RunConfig) -> dict[str, Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    run = RunDir(Path(run_path))
    uri = tracking_uri(config)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    experiment_id = (experiment.experiment_id if experiment is not None else
                     client.create_experiment(config.tracking.experiment,
                                              artifact_location=_artifact_root(config, uri)))
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run.run_id}'", max_results=1)
    mlflow_run = found[0] if found else client.create_run(experiment_id, run_name=run.run_id,
                                                          tags={RUN_TAG: run.run_id})
    run_id = mlflow_run.info.run_id
    params = params_of(config)
    logged = mlflow_run.data.params if found else {}
    todo = [mlflow.entities.Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=todo[start:start + 100])
    epochs, single = metrics_of(run)
    # One fixed timestamp: a retried task logs identical rows, which the store keeps once (per-epoch values are
    # told apart by their step).
    stamp = 0
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(name, value, stamp, step)
                                      for name, points in epochs.items() for step, value in points]
                     + [mlflow.entities.Metric(name, value, stamp, 0) for name, value in single.items()])
    decision = read_json_if_present(run.path / files.DECISION) or {}
    tags = {"sftjudge.action": str(decision.get("action")), "sftjudge.reasons": "\n".join(
        decision.get("reasons", []))[:5000], "sftjudge.run_dir": str(run.path)}
    metrics = read_json_if_present(run.path / files.METRICS) or {}
    if metrics:
        tags |= {"sftjudge.judge": str(metrics.get("judge"))[:5000],
                 "sftjudge.judge_valid": str((metrics.get("health") or {}).get("valid"))}
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    for name in ARTIFACTS:
        if (run.path / name).is_file():
            client.log_artifact(run_id, str(run.path / name), artifact_path=str(Path(name).parent).strip("."))
    version = _register(client, run, config, run_id) if decision.get("action") == "promote" else None
    client.set_terminated(run_id)
    return {"uri": uri, "experiment_id": experiment_id, "mlflow_run_id": run_id, "registered_version": version}


def _artifact_root(config: RunConfig, uri: str) -> str | None:
    """Artifacts beside a local SQLite store (under the runs directory); a server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(config.runs_dir).resolve() / "mlartifacts").as_uri()
    return None


def _register(client, run: RunDir, config: RunConfig, run_id: str) -> str:
    """The chosen checkpoint as a new version of the registered model; `champion` moves to it, the version it
    leaves becomes `previous`."""
    from mlflow.exceptions import MlflowException

    sft = read_json_if_present(run.path / files.SFT_SUMMARY) or {}
    checkpoint = Path(sft.get("best_checkpoint", ""))
    if not checkpoint.is_dir():
        checkpoint = run.path / files.CHECKPOINTS / checkpoint.name
    name = registered_model(config)
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if existing:  # a retry after the version was created
        version = existing[0].version
    else:
        client.log_artifacts(run_id, str(checkpoint), artifact_path="model")
        try:
            client.create_registered_model(name, description="sftjudge champions (LoRA adapter or full weights)")
        except MlflowException:
            pass  # exists
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        version = client.create_model_version(name, source, run_id=run_id, tags={RUN_TAG: run.run_id}).version
    try:
        before = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        before = None
    if before is not None and str(before) != str(version):
        client.set_registered_model_alias(name, "previous", before)
    client.set_registered_model_alias(name, "champion", version)
    return str(version)
