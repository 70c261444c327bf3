"""Supervised fine-tuning (LoRA via peft, or full) with train and validation loss measured after every epoch.

Both losses are measured the same way - eval mode, no dropout, token-weighted mean over the whole split,
completion tokens only - so the two curves are comparable and their gap means something.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sftjudge.chat import TokenizedExample, template_fingerprint, tokenize_for_training
from sftjudge.device import autocast, device, use_bf16
from sftjudge.rows import Example
from sftjudge.rundir import atomic_directory, atomic_write_json

CHECKPOINT_META = "sftjudge-checkpoint.json"


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


@dataclass
class SFTResult:
    epochs: list[EpochMetrics]
    best_epoch: int
    best_checkpoint: str
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


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), batch order shuffled.

    >>> length_grouped_batches([5, 1, 4, 2], 2, random.Random(0)) in ([[1, 3], [2, 0]], [[2, 0], [1, 3]])
    True
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[TokenizedExample], pad_id: int):
    """Right-pad a batch into input_ids, attention_mask and labels tensors (-100 on padding)."""
    import torch

    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return ids, mask, labels


def summed_token_loss(model, ids, mask, labels):
    """(sum of token cross-entropies over target tokens, number of target tokens) for one batch."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def mean_loss(model, examples: list[TokenizedExample], *, batch_size: int, pad_id: int, bf16: bool,
              desc: str = "eval") -> float:
    """Token-weighted mean completion loss over all `examples`, in eval mode (no dropout), no gradients."""
    import torch
    from sftjudge.progress import progress

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = length_grouped_batches([len(e.input_ids) for e in examples], batch_size, random.Random(0))
    with torch.no_grad():
        for batch in progress(batches, desc=desc, leave=False, unit="batch"):
            ids, mask, labels = (t.to(device()) for t in collate([examples[i] for i in batch], pad_id))
            with autocast(bf16):
                loss, n = summed_token_loss(model, ids, mask, labels)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


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
          checkpoints_dir: Path, on_epoch: Callable[[EpochMetrics], None] | None = None) -> SFTResult:
    """Fine-tune `model` on `train_rows`; after each epoch measure train and val loss and save a checkpoint.

    Returns per-epoch metrics and the epoch with the lowest validation loss. Raises ValueError on empty splits.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not train_rows or not val_rows:
        raise ValueError(f"need rows in both train ({len(train_rows)}) and val ({len(val_rows)}) splits")
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    bf16 = use_bf16(settings.precision)
    fingerprint = template_fingerprint(tokenizer)
    train_tok = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in train_rows]
    val_tok = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in val_rows]
    model = attach_adapters(model, settings).to(device())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    micro_per_epoch = math.ceil(len(train_tok) / settings.batch_size)
    steps_total = math.ceil(micro_per_epoch / settings.grad_accum) * settings.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps_total), steps_total)
    rng = random.Random(settings.seed)
    history: list[EpochMetrics] = []
    for epoch in range(1, settings.epochs + 1):
        started = time.time()
        step_loss, steps, tokens = _train_one_epoch(model, optimizer, scheduler, train_tok, settings, rng,
                                                    tokenizer.pad_token_id, bf16, epoch)
        eval_bs = settings.batch_size * 2
        train_loss = mean_loss(model, train_tok, batch_size=eval_bs, pad_id=tokenizer.pad_token_id, bf16=bf16,
                               desc=f"epoch {epoch} train loss")
        val_loss = mean_loss(model, val_tok, batch_size=eval_bs, pad_id=tokenizer.pad_token_id, bf16=bf16,
                             desc=f"epoch {epoch} val loss")
        checkpoint = save_checkpoint(model, tokenizer, checkpoints_dir / f"epoch-{epoch}", epoch=epoch,
                                     method=settings.method, fingerprint=fingerprint)
        metrics = EpochMetrics(epoch, train_loss, val_loss, _ppl(train_loss), _ppl(val_loss), step_loss, steps,
                               tokens, round(time.time() - started, 2), str(checkpoint))
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
    best = min(history, key=lambda m: m.val_loss)
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    return SFTResult(history, best.epoch, best.checkpoint, fingerprint, trainable, total, "bf16" if bf16 else "fp32")


def _train_one_epoch(model, optimizer, scheduler, examples, settings, rng, pad_id, bf16, epoch):
    from sftjudge.progress import progress

    model.train()
    batches = length_grouped_batches([len(e.input_ids) for e in examples], settings.batch_size, rng)
    losses: list[float] = []
    tokens = 0
    started = time.time()
    bar = progress(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch")
    for i, batch in enumerate(bar, start=1):
        ids, mask, labels = (t.to(device()) for t in collate([examples[j] for j in batch], pad_id))
        with autocast(bf16):
            loss_sum, n = summed_token_loss(model, ids, mask, labels)
        loss = loss_sum / max(n, 1)
        (loss / settings.grad_accum).backward()
        if i % settings.grad_accum == 0 or i == len(batches):
            import torch

            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(mask.sum())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / max(time.time() - started, 1e-9):.0f}", refresh=False)
    return sum(losses) / len(losses), len(batches), tokens


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def save_checkpoint(model, tokenizer, out: Path, *, epoch: int, method: str, fingerprint: str) -> Path:
    """Save adapter (LoRA) or full weights as safetensors, atomically, with the template fingerprint."""
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / CHECKPOINT_META,
                          {"epoch": epoch, "method": method, "template_fingerprint": fingerprint})
    return out


def checkpoint_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / CHECKPOINT_META).read_text())
