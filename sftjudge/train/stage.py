"""The sft stage: load the student, train with out-of-memory fallback, write metrics, summary and plot.

`fine_tune` trains in this process, or - started by `accelerate launch` - as one of N data-parallel processes;
`fine_tune_launched` (train/launch.py) starts those N processes (`sftjudge train RUN_DIR` under `accelerate
launch`) and reads their result back from the run directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig, SFTConfig
from sftjudge.curate.split import load_split
from sftjudge.models.embedded import resolve_model, sftjudge_home
from sftjudge.models.loading import load_causal_lm
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, write_jsonl
from sftjudge.run.stage import StageContext, run_stage
from sftjudge.runtime.oom import free_memory, with_smaller_batch_on_oom
from sftjudge.train.distributed import current, launched
from sftjudge.train.loop import EpochMetrics, SFTResult, TrainData, train


def sft_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Fine-tune the student on data/train.jsonl; per-epoch train and val loss to metrics.jsonl, checkpoints/.

    With sft.num_processes > 1 the training runs as that many data-parallel processes under `accelerate launch`
    (one per GPU), and the stage records what they wrote to the run directory.
    """
    return run_stage("sft", run_path, config, _sft)


def _sft(ctx: StageContext) -> None:
    from sftjudge.train.launch import fine_tune_launched
    from sftjudge.train.precision import check_engine

    run, sft = ctx.run, ctx.config.sft
    check_engine(sft)  # before an embedded model is assembled or a launch starts
    base = resolve_model(sft.base_model, ctx.home)  # an embedded model is assembled here, once
    if sft.num_processes > 1 and not launched():
        summary = fine_tune_launched(run, ctx.config)
    else:
        summary = fine_tune(run, sft, base)[1]
    best = next(m for m in summary["epochs"] if m["epoch"] == summary["best_epoch"])
    ctx.record.outputs = {"metrics": files.EPOCH_METRICS, "summary": files.SFT_SUMMARY, "loss_curve": files.LOSS_CURVE,
                          "best_checkpoint": str(Path(summary["best_checkpoint"]).relative_to(run.path))}
    ctx.record.counts = {"epochs": len(summary["epochs"]), "best_epoch": summary["best_epoch"],
                         "stopped_early": summary["stopped_early"], "resumed_from_epoch": summary["resumed_from_epoch"],
                         "best_val_loss": round(best["val_loss"], 4),
                         "train_loss_at_best": round(best["train_loss"], 4),
                         "trainable_params": summary["trainable_params"], "precision": summary["precision"],
                         "batch_size": summary["batch_size"], "num_processes": summary["num_processes"],
                         "test_ppl": summary["test_ppl"]}


def reference_loss(run: RunDir, sft: SFTConfig, base_path: str, checkpoint: str, batch_size: int) -> float:
    """Mean completion loss of the test split's reference answers under the chosen checkpoint.

    exp() of it is the perplexity of the references: the sanity check of the evaluation stack (if it rises after
    fine-tuning, something is fundamentally wrong), measured exactly like the train and val losses.
    """
    from sftjudge.models.chat import tokenize_for_training
    from sftjudge.runtime.device import device, use_bf16
    from sftjudge.train.batching import mean_loss
    from sftjudge.train.checkpoints import checkpoint_meta, restore_weights
    from sftjudge.train.loop import attach_adapters

    model, tokenizer = load_student(base_path, sft)
    model = attach_adapters(model, sft)
    if not sft.quantization:
        model = model.to(device())
    restore_weights(model, Path(checkpoint), checkpoint_meta(Path(checkpoint))["method"])
    examples = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in load_split(run.path, "test")]
    return mean_loss(model, examples, batch_size=batch_size * 2, pad_id=tokenizer.pad_token_id,
                     bf16=use_bf16(sft.precision), desc="test reference loss")


def load_student(base_path: str, sft: SFTConfig):
    """The student and its tokenizer as training holds them: LoRA's frozen base weights in the training precision
    or quantised (sftjudge/train/precision.py); refused before loading when this machine cannot train so."""
    from sftjudge.train.precision import check_engine, quantization_config, student_dtype

    check_engine(sft)
    return load_causal_lm(base_path, dtype_name=student_dtype(sft), trust_remote_code=sft.trust_remote_code,
                          quantization_config=quantization_config(sft))


def fine_tune(run: RunDir, sft: SFTConfig, base_path: str) -> tuple[SFTResult, dict[str, Any]]:
    """Train on the run's splits into run/checkpoints; resume from the newest complete epoch if there is one.

    On out-of-memory the batch is halved and gradient accumulation doubled, so the effective batch - and the
    optimisation - stays the same. Writes metrics.jsonl, sft.json and loss_curve.png. Under `accelerate launch`
    only the main process writes; the others return the same result with an empty summary.
    """
    from sftjudge.decide.report import plot_losses

    ranks = current()
    data = TrainData(train=load_split(run.path, "train"), val=load_split(run.path, "val"))
    metrics_path = run / files.EPOCH_METRICS

    def log_epoch(m: EpochMetrics) -> None:
        # Appended as each epoch ends so progress is visible; rewritten whole below (a resumed run included).
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(m)) + "\n")

    used = {"batch_size": sft.batch_size}

    def attempt(batch_size: int) -> SFTResult:
        used["batch_size"] = batch_size
        accum = sft.grad_accum * max(1, sft.batch_size // batch_size)
        model, tokenizer = load_student(base_path, sft)
        return train(model, tokenizer, data, sft.model_copy(update={"batch_size": batch_size, "grad_accum": accum}),
                     run / files.CHECKPOINTS, on_epoch=log_epoch)

    if ranks.world > 1:
        # A rank retrying alone would leave the others waiting in an all-reduce; the launching stage retries the
        # whole launch with a smaller batch instead (fine_tune_launched).
        result = attempt(sft.batch_size)
    else:
        result = with_smaller_batch_on_oom(attempt, sft.batch_size)
    # The trained student sits in reference cycles (accelerate rebinds its forward to it); collect it here, or the
    # test-loss pass below - and on a GPU worker the next stage's engine - loads into memory still taken.
    free_memory()
    if not ranks.is_main:
        return result, {}
    write_jsonl(metrics_path, [asdict(m) for m in result.epochs])
    test_loss = reference_loss(run, sft, base_path, result.best_checkpoint, used["batch_size"])
    free_memory()
    base_params = result.total_params - (result.trainable_params if sft.method == "lora" else 0)
    summary = result.to_json() | {"base_model": sft.base_model, "base_model_path": base_path, "method": sft.method,
                                  "base_params": base_params, "batch_size": used["batch_size"],
                                  "num_processes": ranks.world, "test_loss": round(test_loss, 6),
                                  "test_ppl": round(math.exp(min(test_loss, 50)), 4)}
    atomic_write_json(run / files.SFT_SUMMARY, summary)
    plot_losses(result.epochs, run / files.LOSS_CURVE)
    return result, summary


def train_run_dir(run_path: Path, sft: SFTConfig, home: str | None) -> dict[str, Any] | None:
    """The sft stage's training on a curated run directory, alone or as one of the processes of a launch.

    What `sftjudge train RUN_DIR` runs (`accelerate launch --multi_gpu --num_processes N -m sftjudge.cli train
    RUN_DIR`). Writes checkpoints/, metrics.jsonl, sft.json and loss_curve.png from the main process and leaves
    the manifest to the sft stage. Returns sft.json's content on the main process, None on the others. Raises
    FileNotFoundError when the run has no curated data.
    """
    run = RunDir(Path(run_path))
    for split in files.SPLITS.values():
        if not (run / split).is_file():
            raise FileNotFoundError(f"{run / split} does not exist: the run's curate stage has not finished; run "
                                    f"the cycle (`sftjudge run`) or point at a curated run directory")
    ranks = current()
    with ranks.main_first():  # an embedded model is assembled on first use: once, not by N processes at once
        base_path = resolve_model(sft.base_model, sftjudge_home(home))
    _, summary = fine_tune(run, sft, base_path)
    # Not in a `finally`: a failed rank must exit (the launcher then stops the others), not wait at a barrier.
    ranks.finish()
    return summary if ranks.is_main else None
