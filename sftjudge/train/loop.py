"""Supervised fine-tuning (LoRA via peft, or full) with train and validation loss measured after every epoch.

Both losses are measured the same way - eval mode, no dropout, token-weighted mean over the whole split,
completion tokens only - so the two curves are comparable and their gap means something. Every epoch ends in
a checkpoint holding what is needed to resume; a killed run continues from the last completed epoch.

Under `accelerate launch` the same loop runs as N data-parallel processes (sftjudge.distributed): each trains on
its shard of every batch, and losses are sums over all ranks, so the numbers match a single-process run.
"""

from __future__ import annotations

import math
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.config import SFTConfig
from sftjudge.curate.rows import Example
from sftjudge.errors import ConfigError, ModelError
from sftjudge.models.chat import template_fingerprint, tokenize_for_training
from sftjudge.runtime.device import autocast, device, use_bf16
from sftjudge.train.batching import (
    collate,
    length_grouped_batches,
    mean_loss,
    summed_token_loss,
)
from sftjudge.train.checkpoints import (
    epoch_checkpoints,
    load_training_state,
    prune_checkpoints,
    restore_weights,
    save_checkpoint,
)
from sftjudge.train.distributed import Ranks, current


@dataclass(kw_only=True)
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


@dataclass(kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class TrainData:
    """The rows training sees: the training split (stepped on) and the validation split (measured only)."""

    train: list[Example]
    val: list[Example]


@dataclass(kw_only=True)
class _Training:
    """Everything one training run carries from step to step, in one place instead of a dozen parameters."""

    sft: SFTConfig
    model: Any  # the (peft-wrapped) model: what is saved and evaluated
    step_model: Any  # what the optimizer steps through: the model itself, or its DDP wrapper under a launch
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    rng: random.Random  # the batch order; same seed on every rank
    ranks: Ranks
    bf16: bool
    train_tok: list
    val_tok: list
    checkpoints_dir: Path
    fingerprint: str  # the chat template the checkpoints are trained with

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def attach_adapters(model, sft: SFTConfig):
    """Wrap the model for LoRA (only adapter weights train) or leave it whole for full fine-tuning.

    Raises ConfigError when no module named in sft.target_modules exists in the model.
    """
    if sft.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in sft.target_modules if m in present]
    if not targets:
        raise ConfigError(f"sft.target_modules {list(sft.target_modules)} match no module of this model; "
                          f"some module names it has: {sorted(present)[:20]}")
    lora = LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train(model, tokenizer, data: TrainData, sft: SFTConfig, checkpoints_dir: Path, *,
          on_epoch: Callable[[EpochMetrics], None] | None = None) -> SFTResult:
    """Fine-tune `model`; after each epoch measure train and val loss and save a resumable checkpoint.

    Training continues after the newest complete checkpoint in `checkpoints_dir` (weights, optimizer, scheduler
    and RNG states restored). Stops early when val loss has not improved for `sft.early_stopping_patience`
    epochs. Returns per-epoch metrics and the epoch with the lowest validation loss. Under `accelerate launch`
    every process calls this with the same arguments; `sft.batch_size` stays the global batch, only the main
    process saves checkpoints and calls `on_epoch`, and all return the same result. Raises ValueError on empty
    splits.
    """
    if not data.train or not data.val:
        raise ValueError(f"need rows in both train ({len(data.train)}) and val ({len(data.val)}) splits")
    state = _start(model, tokenizer, data, sft, Path(checkpoints_dir))
    history = _resume(state)
    resumed_from = history[-1].epoch if history else None
    state.step_model = state.ranks.wrap(state.model)  # after resuming: every rank loaded the same checkpoint
    stopped_early = _should_stop(history, sft.early_stopping_patience)
    for epoch in range(len(history) + 1, sft.epochs + 1):
        if stopped_early:
            break
        history.append(_epoch(state, epoch))
        if state.ranks.is_main:
            _save_epoch(state, history)
            if on_epoch:
                on_epoch(history[-1])
        state.ranks.wait()  # nobody runs ahead of a checkpoint that is not on disk yet
        # Every rank decides from the same all-reduced val losses, so all stop (or go on) together.
        stopped_early = _should_stop(history, sft.early_stopping_patience) and epoch < sft.epochs
    best = min(history, key=lambda m: m.val_loss)
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    return SFTResult(
        epochs=history, best_epoch=best.epoch, best_checkpoint=best.checkpoint,
        selection=_selection(history, best, stopped_early, sft), stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        kept_checkpoints=[str(p) for p in epoch_checkpoints(state.checkpoints_dir).values()],
        template_fingerprint=state.fingerprint, trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in state.model.parameters()), precision="bf16" if state.bf16 else "fp32")


def _start(model, tokenizer, data: TrainData, sft: SFTConfig, checkpoints_dir: Path) -> _Training:
    """Tokenise, attach adapters, build optimizer and schedule: the state before the first (or resumed) epoch."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    ranks = current()  # before the model moves: joining the process group picks this process's GPU
    torch.manual_seed(sft.seed)  # same seed on every rank: identical adapter init before DDP syncs anything
    train_tok = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in data.train]
    val_tok = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in data.val]
    fingerprint = template_fingerprint(tokenizer)
    model = _prepare_model(model, sft)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sft.learning_rate, weight_decay=sft.weight_decay)
    steps_total = math.ceil(math.ceil(len(train_tok) / sft.batch_size) / sft.grad_accum) * sft.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(sft.warmup_ratio * steps_total), steps_total)
    return _Training(sft=sft, model=model, step_model=model, tokenizer=tokenizer, optimizer=optimizer,
                     scheduler=scheduler, rng=random.Random(sft.seed), ranks=ranks, bf16=use_bf16(sft.precision),
                     train_tok=train_tok, val_tok=val_tok, checkpoints_dir=checkpoints_dir, fingerprint=fingerprint)


def _epoch(state: _Training, epoch: int) -> EpochMetrics:
    """Train one epoch, then measure train and val loss the same way (eval mode, whole split)."""
    started = time.time()
    step_losses, tokens = _train_one_epoch(state, epoch)
    seconds = time.time() - started
    train_loss = _split_loss(state, state.train_tok, f"epoch {epoch} train loss")
    val_loss = _split_loss(state, state.val_tok, f"epoch {epoch} val loss")
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        # A NaN run once answered everything empty and was promoted, every comparison with NaN being false.
        raise ConfigError(f"training diverged in epoch {epoch} (train loss {train_loss}, val loss {val_loss}): lower "
                          f"sft.learning_rate (now {state.sft.learning_rate}) or look for extreme rows in the data; "
                          f"no checkpoint of this epoch was kept")
    return EpochMetrics(epoch=epoch, train_loss=train_loss, val_loss=val_loss, train_ppl=_ppl(train_loss),
                        val_ppl=_ppl(val_loss), step_loss_mean=sum(step_losses) / len(step_losses),
                        steps=len(step_losses), target_tokens=tokens, seconds=round(time.time() - started, 2),
                        checkpoint=str(state.checkpoints_dir / f"epoch-{epoch}"), step_losses=step_losses,
                        tokens_per_second=round(tokens / max(seconds, 1e-9), 1))


def _save_epoch(state: _Training, history: list[EpochMetrics]) -> None:
    """Write the epoch's checkpoint with its resume state, then drop checkpoints no longer kept."""
    import torch

    epoch = history[-1].epoch
    resume = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
              "rng": state.rng.getstate(), "torch_rng": torch.get_rng_state(), "history": [asdict(m) for m in history]}
    meta = {"epoch": epoch, "method": state.sft.method, "template_fingerprint": state.fingerprint}
    save_checkpoint(state.model, state.tokenizer, state.checkpoints_dir / f"epoch-{epoch}", meta,
                    training_state=resume)
    if state.sft.keep_checkpoints == "best_and_last":
        best = min(history, key=lambda m: m.val_loss).epoch
        prune_checkpoints(state.checkpoints_dir, keep={best, epoch})


def _prepare_model(model, sft: SFTConfig):
    model = attach_adapters(model, sft)
    if sft.gradient_checkpointing:
        # Recompute activations in the backward pass: less memory for longer sequences, ~30% more compute.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model.to(device())


def _resume(state: _Training) -> list[EpochMetrics]:
    """Restore the newest complete checkpoint into the live objects; return the epoch history so far.

    Raises ModelError (not retried) naming the checkpoint and its epoch when it cannot be read.
    """
    import torch
    from safetensors import SafetensorError

    checkpoints = epoch_checkpoints(state.checkpoints_dir)
    if not checkpoints:
        return []
    epoch = max(checkpoints)
    path = checkpoints[epoch]
    try:
        saved = load_training_state(path)
        if saved is None:
            raise FileNotFoundError("no training_state.pt")
        restore_weights(state.model, path, state.sft.method)
    except pickle.UnpicklingError:
        raise  # a training state carrying code is refused as such (never loaded), not reported as mere damage
    except (OSError, RuntimeError, ValueError, EOFError, SafetensorError) as exc:
        # A damaged file will not load on a retry either: the user decides what to keep.
        raise ModelError(f"{path}: the epoch-{epoch} checkpoint cannot be resumed from ({type(exc).__name__}: "
                         f"{exc}); delete {path} to resume from the epoch before it, or the whole "
                         f"{path.parent} folder to start over") from exc
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    version, internal, gauss = saved["rng"]
    state.rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(saved["torch_rng"])
    return [EpochMetrics(**m) for m in saved["history"]]


def _should_stop(history: list[EpochMetrics], patience: int | None) -> bool:
    """True when val loss has not improved for `patience` epochs since its best."""
    if not patience or not history:
        return False
    best = min(history, key=lambda m: m.val_loss).epoch
    return history[-1].epoch - best >= patience


def _selection(history: list[EpochMetrics], best: EpochMetrics, stopped_early: bool, sft: SFTConfig) -> str:
    text = f"epoch {best.epoch} of {len(history)}: lowest validation loss ({best.val_loss:.4f})"
    if stopped_early:
        text += (f"; stopped early after epoch {history[-1].epoch} because val loss did not improve for "
                 f"{sft.early_stopping_patience} epochs")
    return text


def _train_one_epoch(state: _Training, epoch: int) -> tuple[list[float], int]:
    """One pass over the training rows; returns the per-batch losses and the number of tokens seen.

    Every rank draws the same batch order and trains on its shard of each batch. A shard's summed loss is divided
    by the token count of the whole batch and multiplied by the number of ranks, so DDP's gradient average is
    exactly the gradient of the batch's token-weighted mean loss: the step one process takes on the whole batch.
    """
    import torch

    from sftjudge.runtime.progress import progress

    sft, ranks, examples = state.sft, state.ranks, state.train_tok
    state.model.train()
    batches = length_grouped_batches([len(e.input_ids) for e in examples], sft.batch_size, state.rng)
    targets = [_loss_tokens(e) for e in examples]
    losses: list[float] = []
    tokens = 0
    started = time.time()
    bar = progress(batches, desc=f"epoch {epoch}/{sft.epochs}", unit="batch", disable=not ranks.is_main)
    for i, batch in enumerate(bar, start=1):
        step = i % sft.grad_accum == 0 or i == len(batches)
        shard = ranks.shard(batch)
        # A rank whose shard is empty (a last batch smaller than the world) still runs a step - DDP's all-reduce
        # needs every rank - on one row of the batch with weight 0.
        rows = [examples[j] for j in shard or batch[:1]]
        ids, mask, labels = (t.to(device()) for t in collate(rows, state.pad_id))
        with ranks.no_sync(state.step_model, skip=not step):
            with autocast(state.bf16):
                loss_sum, _ = summed_token_loss(state.step_model, ids, mask, labels)
            loss = loss_sum * (ranks.world if shard else 0) / max(sum(targets[j] for j in batch), 1)
            (loss / sft.grad_accum).backward()
        if step:
            torch.nn.utils.clip_grad_norm_([p for p in state.model.parameters() if p.requires_grad], 1.0)
            state.optimizer.step()
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
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


def _split_loss(state: _Training, examples: list, desc: str) -> float:
    """Token-weighted mean loss over the whole split, the same number on every rank.

    Under data parallelism each rank scores its shard and (mean x tokens, tokens) are summed over ranks, which
    is the mean one process computes over the whole split, up to float rounding.
    """
    batch_size, ranks = state.sft.batch_size * 2, state.ranks
    if ranks.world == 1:
        return mean_loss(state.model, examples, batch_size=batch_size, pad_id=state.pad_id, bf16=state.bf16,
                         desc=desc)
    shard = ranks.shard(examples)
    count = sum(_loss_tokens(e) for e in shard)
    mean = (mean_loss(state.model, shard, batch_size=batch_size, pad_id=state.pad_id, bf16=state.bf16, desc=desc)
            if shard else 0.0)
    total, count = ranks.sum([mean * count, count])
    return total / max(count, 1)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))
