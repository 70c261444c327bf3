"""Supervised fine-tuning (LoRA via peft, or full) with train and validation loss measured after every epoch.

Both losses are measured the same way - eval mode, no dropout, token-weighted mean over the whole split,
completion tokens only - so the two curves are comparable and their gap means something. Every epoch ends in
a checkpoint holding what is needed to resume; a killed run continues from the last completed epoch.

Under `accelerate launch` the same loop runs as N data-parallel processes (sftjudge.distributed): each trains on
its shard of every batch, and losses are sums over all ranks, so the numbers match a single-process run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.batching import collate, length_grouped_batches, mean_loss, summed_token_loss
from sftjudge.chat import template_fingerprint, tokenize_for_training
from sftjudge.checkpoints import (epoch_checkpoints, load_training_state, prune_checkpoints, restore_weights,
                                  save_checkpoint)
from sftjudge.device import autocast, device, use_bf16
from sftjudge.distributed import Ranks, current
from sftjudge.rows import Example


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    train_ppl: float
    val_ppl: float
    step_loss_mean: float  # mean of the training-step losses (dropout on, weights moving): not the same as train_loss
    steps: int
    target_tokens: int
    seconds: float
    checkpoint: str
    step_losses: list[float] = field(default_factory=list)
    tokens_per_second: float = 0.0


@dataclass
class SFTResult:
    epochs: list[EpochMetrics]
    best_epoch: int
    best_checkpoint: str
    selection: str  # why this epoch: written into the run so nobody has to guess
    stopped_early: bool
    resumed_from_epoch: int | None
    kept_checkpoints: list[str]
    template_fingerprint: str
    trainable_params: int
    total_params: int
    precision: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainSettings:
    """The SFTConfig fields the training loop needs, decoupled from the config class."""

    method: str
    epochs: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    max_seq_len: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]
    precision: str
    seed: int
    early_stopping_patience: int | None = None
    gradient_checkpointing: bool = False
    keep_checkpoints: str = "best_and_last"


def load_causal_lm(path: str, *, dtype_name: str = "float32", trust_remote_code: bool = False):
    """Load tokenizer + model from a local directory or hub id; safetensors only (no pickle execution)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftjudge.models import load_error_hint

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype_name), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise load_error_hint(path, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def attach_adapters(model, settings: TrainSettings):
    """Wrap the model for LoRA (only adapter weights train) or leave it whole for full fine-tuning."""
    if settings.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in settings.target_modules if m in present]
    if not targets:
        raise ValueError(f"sft.target_modules {list(settings.target_modules)} match no module of this model; "
                         f"some module names it has: {sorted(present)[:20]}")
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train(model, tokenizer, train_rows: list[Example], val_rows: list[Example], settings: TrainSettings,
          checkpoints_dir: Path, on_epoch: Callable[[EpochMetrics], None] | None = None,
          resume: bool = True) -> SFTResult:
    """Fine-tune `model`; after each epoch measure train and val loss and save a resumable checkpoint.

    With `resume`, training continues after the newest complete checkpoint in `checkpoints_dir` (weights,
    optimizer, scheduler and RNG states restored). Stops early when val loss has not improved for
    `early_stopping_patience` epochs. Returns per-epoch metrics and the epoch with the lowest validation loss.
    Under `accelerate launch` every process calls this with the same arguments; `settings.batch_size` stays the
    global batch, only the main process saves checkpoints and calls `on_epoch`, and all return the same result.
    Raises ValueError on empty splits.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not train_rows or not val_rows:
        raise ValueError(f"need rows in both train ({len(train_rows)}) and val ({len(val_rows)}) splits")
    ranks = current()  # before the model moves: joining the process group picks this process's GPU
    torch.manual_seed(settings.seed)  # same seed on every rank: identical adapter init before DDP syncs anything
    bf16 = use_bf16(settings.precision)
    fingerprint = template_fingerprint(tokenizer)
    train_tok = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in train_rows]
    val_tok = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in val_rows]
    model = _prepare_model(model, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_total = math.ceil(math.ceil(len(train_tok) / settings.batch_size) / settings.grad_accum) * settings.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps_total), steps_total)
    rng = random.Random(settings.seed)  # same batch order on every rank: each takes its shard of the same batch
    history = _resume(model, optimizer, scheduler, rng, checkpoints_dir, settings.method) if resume else []
    resumed_from = history[-1].epoch if history else None
    step_model = ranks.wrap(model)  # after resuming: every rank loaded the same checkpoint
    stopped_early = _should_stop(history, settings.early_stopping_patience)
    pad = tokenizer.pad_token_id
    for epoch in range(len(history) + 1, settings.epochs + 1):
        if stopped_early:
            break
        started = time.time()
        step_losses, tokens = _train_one_epoch(model, step_model, optimizer, scheduler, train_tok, settings, rng,
                                               pad, bf16, epoch, ranks)
        seconds = time.time() - started
        eval_batch = settings.batch_size * 2
        train_loss = _split_loss(model, train_tok, eval_batch, pad, bf16, ranks, f"epoch {epoch} train loss")
        val_loss = _split_loss(model, val_tok, eval_batch, pad, bf16, ranks, f"epoch {epoch} val loss")
        metrics = EpochMetrics(epoch, train_loss, val_loss, _ppl(train_loss), _ppl(val_loss),
                               sum(step_losses) / len(step_losses), len(step_losses), tokens,
                               round(time.time() - started, 2), str(checkpoints_dir / f"epoch-{epoch}"),
                               step_losses, round(tokens / max(seconds, 1e-9), 1))
        history.append(metrics)
        if ranks.is_main:
            _save_epoch(model, tokenizer, optimizer, scheduler, rng, history, checkpoints_dir, settings, fingerprint)
            if on_epoch:
                on_epoch(metrics)
        ranks.wait()  # nobody runs ahead of a checkpoint that is not on disk yet
        # Every rank decides from the same all-reduced val losses, so all stop (or go on) together.
        stopped_early = _should_stop(history, settings.early_stopping_patience) and epoch < settings.epochs
    best = min(history, key=lambda m: m.val_loss)
    return SFTResult(
        history, best.epoch, best.checkpoint, _selection(history, best, stopped_early, settings), stopped_early,
        resumed_from, [str(p) for p in epoch_checkpoints(checkpoints_dir).values()], fingerprint,
        sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()), "bf16" if bf16 else "fp32")


def _save_epoch(model, tokenizer, optimizer, scheduler, rng, history, checkpoints_dir: Path, settings,
                fingerprint: str) -> None:
    """Write the epoch's checkpoint with its resume state, then drop checkpoints no longer kept."""
    import torch

    epoch = history[-1].epoch
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": [asdict(m) for m in history]}
    save_checkpoint(model, tokenizer, checkpoints_dir / f"epoch-{epoch}", epoch=epoch, method=settings.method,
                    fingerprint=fingerprint, training_state=state)
    if settings.keep_checkpoints == "best_and_last":
        best = min(history, key=lambda m: m.val_loss).epoch
        prune_checkpoints(checkpoints_dir, keep={best, epoch})


def _prepare_model(model, settings: TrainSettings):
    model = attach_adapters(model, settings)
    if settings.gradient_checkpointing:
        # Recompute activations in the backward pass: less memory for longer sequences, ~30% more compute.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model.to(device())


def _resume(model, optimizer, scheduler, rng: random.Random, checkpoints_dir: Path, method: str):
    """Restore the newest complete checkpoint into the live objects; return the epoch history so far."""
    import torch

    checkpoints = epoch_checkpoints(checkpoints_dir)
    if not checkpoints:
        return []
    path = checkpoints[max(checkpoints)]
    state = load_training_state(path)
    if state is None:
        raise ValueError(f"{path}: has no training_state.pt; cannot resume from it (delete the checkpoints "
                         f"directory to start over)")
    restore_weights(model, path, method)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    version, internal, gauss = state["rng"]
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch_rng"])
    return [EpochMetrics(**m) for m in state["history"]]


def _should_stop(history: list[EpochMetrics], patience: int | None) -> bool:
    """True when val loss has not improved for `patience` epochs since its best."""
    if not patience or not history:
        return False
    best = min(history, key=lambda m: m.val_loss).epoch
    return history[-1].epoch - best >= patience


def _selection(history: list[EpochMetrics], best: EpochMetrics, stopped_early: bool, settings) -> str:
    text = f"epoch {best.epoch} of {len(history)}: lowest validation loss ({best.val_loss:.4f})"
    if stopped_early:
        text += (f"; stopped early after epoch {history[-1].epoch} because val loss did not improve for "
                 f"{settings.early_stopping_patience} epochs")
    return text


def _train_one_epoch(model, step_model, optimizer, scheduler, examples, settings, rng, pad_id, bf16, epoch,
                     ranks: Ranks):
    """One pass over the training rows; returns the per-batch losses and the number of tokens seen.

    Every rank draws the same batch order and trains on its shard of each batch. A shard's summed loss is divided
    by the token count of the whole batch and multiplied by the number of ranks, so DDP's gradient average is
    exactly the gradient of the batch's token-weighted mean loss: the step one process takes on the whole batch.
    """
    import torch

    from sftjudge.progress import progress

    model.train()
    batches = length_grouped_batches([len(e.input_ids) for e in examples], settings.batch_size, rng)
    targets = [_loss_tokens(e) for e in examples]
    losses: list[float] = []
    tokens = 0
    started = time.time()
    bar = progress(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", disable=not ranks.is_main)
    for i, batch in enumerate(bar, start=1):
        step = i % settings.grad_accum == 0 or i == len(batches)
        shard = ranks.shard(batch)
        # A rank whose shard is empty (a last batch smaller than the world) still runs a step - DDP's all-reduce
        # needs every rank - on one row of the batch with weight 0.
        rows = [examples[j] for j in shard or batch[:1]]
        ids, mask, labels = (t.to(device()) for t in collate(rows, pad_id))
        with ranks.no_sync(step_model, skip=not step):
            with autocast(bf16):
                loss_sum, _ = summed_token_loss(step_model, ids, mask, labels)
            loss = loss_sum * (ranks.world if shard else 0) / max(sum(targets[j] for j in batch), 1)
            (loss / settings.grad_accum).backward()
        if step:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(mask.sum()) if shard else 0
        rate = tokens * ranks.world / max(time.time() - started, 1e-9)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:.0f}", refresh=False)
    if ranks.world > 1:  # one all-reduce per epoch: each step's loss is the mean of the ranks' scaled losses
        *sums, tokens = ranks.sum(losses + [tokens])
        losses, tokens = [s / ranks.world for s in sums], int(tokens)
    return [round(x, 5) for x in losses], tokens


def _loss_tokens(example) -> int:
    """Positions that carry loss in `summed_token_loss`: labels after the first, not -100."""
    return sum(1 for label in example.labels[1:] if label != -100)


def _split_loss(model, examples, batch_size: int, pad_id: int, bf16: bool, ranks: Ranks, desc: str) -> float:
    """Token-weighted mean loss over the whole split, the same number on every rank.

    Under data parallelism each rank scores its shard and (mean x tokens, tokens) are summed over ranks, which
    is the mean one process computes over the whole split, up to float rounding.
    """
    if ranks.world == 1:
        return mean_loss(model, examples, batch_size=batch_size, pad_id=pad_id, bf16=bf16, desc=desc)
    shard = ranks.shard(examples)
    count = sum(_loss_tokens(e) for e in shard)
    mean = mean_loss(model, shard, batch_size=batch_size, pad_id=pad_id, bf16=bf16, desc=desc) if shard else 0.0
    total, count = ranks.sum([mean * count, count])
    return total / max(count, 1)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))
