"""The sft stage's work: load the student, train with out-of-memory fallback, write metrics, summary and plot."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

from sftjudge.config import SFTConfig
from sftjudge.oom import with_smaller_batch_on_oom
from sftjudge.rundir import RunDir, atomic_write_json, write_jsonl
from sftjudge.sft import EpochMetrics, SFTResult, TrainSettings, load_causal_lm, train
from sftjudge.split import load_split


def settings_from_config(sft: SFTConfig) -> TrainSettings:
    fields = {k: v for k, v in sft.model_dump().items() if k in TrainSettings.__dataclass_fields__}
    return TrainSettings(**fields | {"target_modules": tuple(sft.target_modules)})


def reference_loss(run: RunDir, sft: SFTConfig, base_path: str, checkpoint: str, batch_size: int) -> float:
    """Mean completion loss of the test split's reference answers under the chosen checkpoint.

    exp() of it is the perplexity of the references: the sanity check of the evaluation stack (if it rises after
    fine-tuning, something is fundamentally wrong), measured exactly like the train and val losses.
    """
    from pathlib import Path

    from sftjudge.batching import mean_loss
    from sftjudge.chat import tokenize_for_training
    from sftjudge.checkpoints import checkpoint_meta, restore_weights
    from sftjudge.device import use_bf16
    from sftjudge.sft import attach_adapters

    model, tokenizer = load_causal_lm(base_path, trust_remote_code=sft.trust_remote_code)
    settings = settings_from_config(sft)
    model = attach_adapters(model, settings)
    restore_weights(model, Path(checkpoint), checkpoint_meta(Path(checkpoint))["method"])
    examples = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in load_split(run.path, "test")]
    return mean_loss(model, examples, batch_size=batch_size * 2, pad_id=tokenizer.pad_token_id,
                     bf16=use_bf16(sft.precision), desc="test reference loss")


def fine_tune(run: RunDir, sft: SFTConfig, base_path: str) -> tuple[SFTResult, dict[str, Any]]:
    """Train on the run's splits into run/checkpoints; resume from the newest complete epoch if there is one.

    On out-of-memory the batch is halved and gradient accumulation doubled, so the effective batch - and the
    optimisation - stays the same. Writes metrics.jsonl, sft.json and loss_curve.png.
    """
    from sftjudge.report import plot_losses

    settings = settings_from_config(sft)
    train_rows, val_rows = load_split(run.path, "train"), load_split(run.path, "val")
    metrics_path = run / "metrics.jsonl"

    def log_epoch(m: EpochMetrics) -> None:
        # Appended as each epoch ends so progress is visible; rewritten whole below (a resumed run included).
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(m)) + "\n")

    used = {"batch_size": settings.batch_size}

    def attempt(batch_size: int) -> SFTResult:
        used["batch_size"] = batch_size
        accum = settings.grad_accum * max(1, settings.batch_size // batch_size)
        model, tokenizer = load_causal_lm(base_path, trust_remote_code=sft.trust_remote_code)
        return train(model, tokenizer, train_rows, val_rows, replace(settings, batch_size=batch_size,
                                                                     grad_accum=accum),
                     run / "checkpoints", on_epoch=log_epoch)

    result = with_smaller_batch_on_oom(attempt, settings.batch_size)
    write_jsonl(metrics_path, [asdict(m) for m in result.epochs])
    test_loss = reference_loss(run, sft, base_path, result.best_checkpoint, used["batch_size"])
    base_params = result.total_params - (result.trainable_params if sft.method == "lora" else 0)
    summary = result.to_json() | {"base_model": sft.base_model, "base_model_path": base_path, "method": sft.method,
                                  "base_params": base_params, "batch_size": used["batch_size"],
                                  "test_loss": round(test_loss, 6), "test_ppl": round(math.exp(min(test_loss, 50)), 4)}
    atomic_write_json(run / "sft.json", summary)
    plot_losses(result.epochs, run / "loss_curve.png")
    return result, summary
