"""Supervised fine-tuning (LoRA via peft, or full) with train and validation loss measured after every epoch.

The steps are TRL's `SFTTrainer` (train/engine.py: the field's engine on transformers' Trainer and accelerate -
optimizer, schedule, accumulation, mixed precision, DDP or FSDP, quantised bases, checkpoints of the optimizer and
RNG state). Around it, an epoch callback keeps what the cycle's decisions rest on:
- train and val loss measured the same way - eval mode, no dropout, token-weighted mean over the whole split,
  completion tokens only - so the two curves are comparable and their gap means something;
- early stopping with patience, the best epoch chosen by val loss and the reason written down;
- every epoch ends in a checkpoint published whole (train/checkpoints.py) with the chat template's fingerprint and
  the history; a killed run continues from the last completed epoch.

Under `accelerate launch` the same code runs as N data-parallel processes: the trainer steps on each process's
share of every global batch, and measured losses are sums over all processes, so the numbers match one process.
"""

from __future__ import annotations

import math
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.config import SFTConfig
from sftjudge.curate.rows import Example
from sftjudge.errors import ConfigError, ModelError
from sftjudge.models.chat import template_fingerprint, tokenize_for_training
from sftjudge.train import engine
from sftjudge.train.batching import mean_loss
from sftjudge.train.checkpoints import (
    STAGING,
    check_resumable,
    epoch_checkpoints,
    prune_checkpoints,
    publish_checkpoint,
)
from sftjudge.train.distributed import Ranks, current
from sftjudge.train.precision import base_weights_precision


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
    """What the epoch callback needs from one training run, in one place instead of a dozen parameters."""

    sft: SFTConfig
    tokenizer: Any
    ranks: Ranks
    bf16: bool  # autocast of the loss measurements (the trainer's own steps follow its arguments)
    train_tok: list
    val_tok: list
    checkpoints_dir: Path
    fingerprint: str  # the chat template the checkpoints are trained with
    trainer: Any = None

    @property
    def model(self):
        """The (peft-wrapped) model itself: what is measured and saved, not its DDP/FSDP wrapper."""
        return self.trainer.model

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def lora_config(model, sft: SFTConfig):
    """The LoraConfig for the sft settings, on the target modules this model has.

    Raises ConfigError when no module named in sft.target_modules exists in the model.
    """
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in sft.target_modules if m in present]
    if not targets:
        raise ConfigError(f"sft.target_modules {list(sft.target_modules)} match no module of this model; "
                          f"some module names it has: {sorted(present)[:20]}")
    return LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def attach_adapters(model, sft: SFTConfig):
    """Wrap the model for LoRA (only adapter weights train) or leave it whole for full fine-tuning."""
    if sft.method == "full":
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, sft))


def train(model, tokenizer, data: TrainData, sft: SFTConfig, checkpoints_dir: Path, *,
          on_epoch: Callable[[EpochMetrics], None] | None = None) -> SFTResult:
    """Fine-tune `model`; after each epoch measure train and val loss and save a resumable checkpoint.

    Training continues after the newest complete checkpoint in `checkpoints_dir` (weights, optimizer, scheduler
    and RNG states restored). Stops early when val loss has not improved for `sft.early_stopping_patience`
    epochs. Returns per-epoch metrics and the epoch with the lowest validation loss. Under `accelerate launch`
    every process calls this with the same arguments; `sft.batch_size` stays the global batch, only the main
    process saves checkpoints and calls `on_epoch`, and all return the same result. Raises ValueError on empty
    splits, ModelError when the newest checkpoint cannot be resumed from.
    """
    if not data.train or not data.val:
        raise ValueError(f"need rows in both train ({len(data.train)}) and val ({len(data.val)}) splits")
    state = _start(model, tokenizer, data, sft, Path(checkpoints_dir))
    history, resume_from = _resume(state)
    resumed_from = history[-1].epoch if history else None
    stopped_early = _should_stop(history, sft.early_stopping_patience)
    if len(history) < sft.epochs and not stopped_early:
        stopped_early = _run_trainer(state, model, history, resume_from, on_epoch)
    best = min(history, key=lambda m: m.val_loss)
    params = list((state.trainer.model if state.trainer else model).parameters())
    return SFTResult(
        epochs=history, best_epoch=best.epoch, best_checkpoint=best.checkpoint,
        selection=_selection(history, best, stopped_early, sft), stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        kept_checkpoints=[str(p) for p in epoch_checkpoints(state.checkpoints_dir).values()],
        template_fingerprint=state.fingerprint, trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        precision="bf16" if state.bf16 else "fp16" if sft.precision == "fp16" else "fp32")


def _start(model, tokenizer, data: TrainData, sft: SFTConfig, checkpoints_dir: Path) -> _Training:
    """Tokenise and settle the precision: the state before the first (or resumed) epoch."""
    ranks = current()  # before the model moves: joining the process group picks this process's GPU
    if ranks.is_main:
        shutil.rmtree(checkpoints_dir / STAGING, ignore_errors=True)  # what a killed save left: never a checkpoint
    ranks.wait()
    bf16 = base_weights_precision(model, sft)
    return _Training(sft=sft, tokenizer=tokenizer, ranks=ranks, bf16=bf16,
                     train_tok=[tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in data.train],
                     val_tok=[tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in data.val],
                     checkpoints_dir=checkpoints_dir, fingerprint=template_fingerprint(tokenizer))


def _run_trainer(state: _Training, model, history: list[EpochMetrics], resume_from: Path | None,
                 on_epoch: Callable[[EpochMetrics], None] | None) -> bool:
    """Build the trainer and train the remaining epochs; True when training stopped early."""
    import torch

    sft, ranks = state.sft, state.ranks
    torch.manual_seed(sft.seed)  # same seed on every rank: identical adapter init before DDP syncs anything
    dataset = engine.rows_dataset(state.train_tok, pack_to=sft.max_seq_len if sft.packing else None)
    lengths = [len(ids) for ids in dataset["input_ids"][:-1]]  # the last row is the weightless one
    micro_batches = math.ceil(len(lengths) / sft.batch_size)
    args = engine.training_arguments(sft, str(state.checkpoints_dir / STAGING), world=ranks.world,
                                     steps_total=math.ceil(micro_batches / sft.grad_accum) * sft.epochs,
                                     bf16=state.bf16, fp16=sft.precision == "fp16")
    sampler = engine.GroupedSampler(lengths, batch_size=sft.batch_size, world=ranks.world, seed=sft.seed)
    epochs = _EpochCallback(state, history, on_epoch)
    trainer_class = engine.student_trainer_class()
    state.trainer = trainer_class(
        model=model, args=args, train_dataset=dataset,
        data_collator=engine.collate_rows(state.pad_id, packed=sft.packing), processing_class=state.tokenizer,
        peft_config=lora_config(model, sft) if sft.method == "lora" else None, callbacks=[epochs.callback()],
        sampler=sampler)
    try:
        state.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        if ranks.is_main:
            shutil.rmtree(state.checkpoints_dir / STAGING, ignore_errors=True)
    return epochs.stopped_early


class _EpochCallback:
    """At each epoch's end: measure the losses, decide on stopping; once the trainer saved: publish the epoch."""

    def __init__(self, state: _Training, history: list[EpochMetrics],
                 on_epoch: Callable[[EpochMetrics], None] | None):
        self.state, self.history, self.on_epoch = state, history, on_epoch
        self.started = 0.0
        self.stopped_early = False

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class EpochCallback(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                outer.started = time.time()
                outer.state.trainer.step_records.clear()

            def on_epoch_end(self, args, state, control, **kwargs):
                outer.epoch_end(control)

            def on_save(self, args, state, control, **kwargs):
                outer.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        return EpochCallback()

    def epoch_end(self, control) -> None:
        sft, epoch = self.state.sft, len(self.history) + 1
        self.history.append(_measure(self.state, epoch, time.time() - self.started))
        # Every rank decides from the same all-reduced val losses, so all stop (or go on) together.
        if _should_stop(self.history, sft.early_stopping_patience) and epoch < sft.epochs:
            self.stopped_early = control.should_training_stop = True
        control.should_save = True

    def publish(self, staged: Path) -> None:
        state = self.state
        state.ranks.wait()  # every process's RNG state is in the staging folder before it moves
        if state.ranks.is_main:
            _save_epoch(state, self.history, staged)
            if self.on_epoch:
                self.on_epoch(self.history[-1])
        state.ranks.wait()  # nobody runs ahead of a checkpoint that is not on disk yet


def _measure(state: _Training, epoch: int, seconds: float) -> EpochMetrics:
    """The epoch's step losses (summed over processes), then train and val loss measured the same way."""
    records = state.trainer.step_records
    sums = state.ranks.sum([x for record in records for x in record])
    steps = [sums[i:i + 3] for i in range(0, len(sums), 3)]
    step_losses = [round(loss / max(targets, 1), 5) for loss, targets, _ in steps]
    tokens = int(sum(tokens for _, _, tokens in steps))
    train_loss = _split_loss(state, state.train_tok, f"epoch {epoch} train loss")
    val_loss = _split_loss(state, state.val_tok, f"epoch {epoch} val loss")
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        # A NaN run once answered everything empty and was promoted, every comparison with NaN being false.
        raise ConfigError(f"training diverged in epoch {epoch} (train loss {train_loss}, val loss {val_loss}): lower "
                          f"sft.learning_rate (now {state.sft.learning_rate}) or look for extreme rows in the data; "
                          f"no checkpoint of this epoch was kept")
    return EpochMetrics(epoch=epoch, train_loss=train_loss, val_loss=val_loss, train_ppl=_ppl(train_loss),
                        val_ppl=_ppl(val_loss), step_loss_mean=sum(step_losses) / max(len(step_losses), 1),
                        steps=len(step_losses), target_tokens=tokens, seconds=round(seconds, 2),
                        checkpoint=str(state.checkpoints_dir / f"epoch-{epoch}"), step_losses=step_losses,
                        tokens_per_second=round(tokens / max(seconds, 1e-9), 1))


def _save_epoch(state: _Training, history: list[EpochMetrics], staged: Path) -> None:
    """Publish the epoch's checkpoint with its history, then drop checkpoints no longer kept."""
    epoch = history[-1].epoch
    meta = {"epoch": epoch, "method": state.sft.method, "template_fingerprint": state.fingerprint}
    publish_checkpoint(staged, state.checkpoints_dir / f"epoch-{epoch}", meta,
                       training_state={"history": [asdict(m) for m in history]})
    if state.sft.keep_checkpoints == "best_and_last":
        best = min(history, key=lambda m: m.val_loss).epoch
        prune_checkpoints(state.checkpoints_dir, keep={best, epoch})


def _resume(state: _Training) -> tuple[list[EpochMetrics], Path | None]:
    """The epoch history so far and the newest complete checkpoint to resume from (None: start fresh).

    Raises ModelError (not retried) naming the checkpoint and its epoch when it cannot be read.
    """
    from safetensors import SafetensorError

    checkpoints = epoch_checkpoints(state.checkpoints_dir)
    if not checkpoints:
        return [], None
    epoch = max(checkpoints)
    path = checkpoints[epoch]
    try:
        saved = check_resumable(path, state.sft.method)
    except pickle.UnpicklingError:
        raise  # a training state carrying code is refused as such (never loaded), not reported as mere damage
    except (OSError, RuntimeError, ValueError, EOFError, SafetensorError) as exc:
        # A damaged file will not load on a retry either: the user decides what to keep.
        raise ModelError(f"{path}: the epoch-{epoch} checkpoint cannot be resumed from ({type(exc).__name__}: "
                         f"{exc}); delete {path} to resume from the epoch before it, or the whole "
                         f"{path.parent} folder to start over") from exc
    return [EpochMetrics(**m) for m in saved["history"]], path


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
    # Shards padded with weightless rows to one length: every rank runs as many batches (FSDP gathers per batch).
    shard += [examples[0].without_loss()] * (math.ceil(len(examples) / ranks.world) - len(shard))
    mean = mean_loss(state.model, shard, batch_size=batch_size, pad_id=state.pad_id, bf16=state.bf16, desc=desc)
    total, count = ranks.sum([mean * count, count])
    return total / max(count, 1)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))
