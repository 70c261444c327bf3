"""Benchmark the SFT stage against TRL's SFTTrainer: same model, rows, batch size, LoRA and optimizer settings, one run.

    .venv/bin/python bench/sft.py            # SmolLM2-135M-Instruct, 64 rows, 1 epoch, batch 8
    .venv/bin/python bench/sft.py --quick    # tiny random model, a few rows, well under a minute

Needs TRL: `pip install -e .[bench]`. Both sides get the first `--rows` good rows of the bundled sample as
prompt/completion chats, the same chat template, completion-only loss, LoRA r/alpha/dropout/targets, learning rate,
linear schedule and warm-up steps, grad clipping, batch size, epochs, seed, precision (bf16 autocast when the CPU or
GPU is fast at it, else fp32), no gradient checkpointing (TRL turns it on by default; ours leaves it off) and no
packing. TRL batches by length too (`train_sampling_strategy="group_by_length"`, like ours; `--trl-sampler random`
gives TRL's default), and it gets no eval set and saves no checkpoints.

tokens/s = non-padding tokens fed to the model in training / seconds of the training passes only: for ours the
`tokens_per_second` of each epoch (the pass over the batches; excludes the train/val loss evaluation and the
checkpoint that `train` also does per epoch), for TRL the time between the trainer's epoch-begin and epoch-end
callbacks (excludes optimizer/accelerator setup inside `trainer.train()`). Model loading and tokenisation are
outside both. The end-to-end wall times are printed too, each saying what it includes. Afterwards both adapters
are scored with the same evaluator (`sftjudge.train.batching.mean_loss` on the training rows, eval mode) to show that
both trained by about the same amount. The last line is ``ratio (ours/trl): X.XX``; the goal is >= 1.0.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without install

from sftjudge.config import SFTConfig  # noqa: E402
from sftjudge.curate.rows import Example  # noqa: E402
from sftjudge.curate.steps import load_rows  # noqa: E402
from sftjudge.models.chat import tokenize_for_training  # noqa: E402
from sftjudge.models.embedded import resolve_model, sftjudge_home  # noqa: E402
from sftjudge.models.loading import load_causal_lm  # noqa: E402
from sftjudge.runtime.device import autocast, bf16_supported  # noqa: E402
from sftjudge.runtime.threads import apply_threads  # noqa: E402
from sftjudge.train.batching import (  # noqa: E402
    collate,
    length_grouped_batches,
    mean_loss,
    summed_token_loss,
)
from sftjudge.train.loop import TrainData, attach_adapters, train  # noqa: E402

DATA = ROOT / "data" / "sample" / "support_tickets.jsonl"
FULL_MODEL = "smollm2-135m-instruct"


@dataclass
class SideResult:
    """What one side measured; `train_seconds` is the training passes only, `wall_seconds` says what it covers."""

    name: str
    tokens: int  # non-padding tokens fed to the model during training
    padded_positions: int  # batch rows x padded width, summed: what the model actually computed over
    train_seconds: float
    wall_seconds: float
    wall_covers: str
    step_losses: list[float]
    trainable_params: int
    loss_after: float = float("nan")  # same evaluator for both sides
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


def bench_rows(rows: int) -> tuple[list[Example], list[Example]]:
    """First `rows` good rows of the sample (bad rows dropped by `load_rows`) and a few following ones as val."""
    result, _ = load_rows(DATA)
    need = rows + max(2, rows // 8)
    if len(result.kept) < need:
        raise SystemExit(f"{DATA} has {len(result.kept)} good rows; --rows {rows} needs {need} (train + val)")
    return result.kept[:rows], result.kept[rows:need]


def bench_settings(args: argparse.Namespace) -> SFTConfig:
    """The project's default SFT settings (lr, LoRA r/alpha/dropout/targets, ...) with the bench's overrides."""
    return SFTConfig(epochs=args.epochs, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                     precision="bf16" if bf16_supported() else "fp32", keep_checkpoints="best_and_last",
                     seed=args.seed)


def warm_up(model_path: str, settings: SFTConfig, rows: list[Example]) -> None:
    """One forward+backward on a throwaway copy, so neither timed side pays the process's first-call costs."""
    model, tokenizer = load_causal_lm(model_path)
    model = attach_adapters(model, settings)
    batch = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in rows[:settings.batch_size]]
    ids, mask, labels = collate(batch, tokenizer.pad_token_id)
    with autocast(settings.precision == "bf16"):
        loss, n = summed_token_loss(model, ids, mask, labels)
    (loss / max(n, 1)).backward()
    del model
    gc.collect()


def run_ours(model_path: str, settings: SFTConfig, train_rows, val_rows, workdir: Path) -> SideResult:
    """`sftjudge.train.loop.train` as the flow calls it; the training-pass time comes from each epoch's
    tokens_per_second."""
    model, tokenizer = load_causal_lm(model_path)
    started = time.perf_counter()
    # A fresh work directory: nothing to resume from.
    result = train(model, tokenizer, TrainData(train=train_rows, val=val_rows), settings, workdir / "checkpoints")
    wall = time.perf_counter() - started
    tokens = sum(m.target_tokens for m in result.epochs)  # sum of attention masks: non-padding tokens
    seconds = sum(m.target_tokens / m.tokens_per_second for m in result.epochs)
    lengths = [len(tokenize_for_training(tokenizer, r, settings.max_seq_len).input_ids) for r in train_rows]
    side = SideResult("ours", tokens, _our_padded_positions(lengths, settings), seconds, wall,
                      "train(): tokenise, attach LoRA, train, + per epoch train/val loss eval and a checkpoint",
                      [s for m in result.epochs for s in m.step_losses], result.trainable_params,
                      loss_after=result.epochs[-1].train_loss)
    side.notes.append(f"ours: {len(result.kept_checkpoints)} checkpoint(s) kept, precision {result.precision}")
    return side


def _our_padded_positions(lengths: list[int], settings: SFTConfig) -> int:
    # Replays the batching of `_train_one_epoch`: the only consumer of its seeded rng is length_grouped_batches.
    rng = random.Random(settings.seed)
    total = 0
    for _ in range(settings.epochs):
        for batch in length_grouped_batches(lengths, settings.batch_size, rng):
            total += len(batch) * max(lengths[i] for i in batch)
    return total


def run_trl(model_path: str, settings: SFTConfig, train_rows, workdir: Path, sampler: str,
            base_tok) -> tuple[SideResult, float]:
    """TRL's SFTTrainer with the same settings; returns its result and the untrained model's loss (same evaluator)."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer
    from trl import __version__ as trl_version

    bf16 = settings.precision == "bf16"
    model, tokenizer = load_causal_lm(model_path)
    loss_before = mean_loss(model, base_tok, batch_size=settings.batch_size * 2, pad_id=tokenizer.pad_token_id,
                            bf16=bf16, desc="loss before training")
    dataset = Dataset.from_list([{"prompt": r.prompt_messages,
                                  "completion": [{"role": "assistant", "content": r.completion}]}
                                 for r in train_rows])
    timer = _epoch_timer()
    set_seed(settings.seed)  # LoRA A matrices are initialised inside the constructor, before Trainer seeds
    started = time.perf_counter()
    config = _trl_config(settings, workdir, sampler, our_warmup_steps(settings, len(train_rows)))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=_lora_config(model, settings), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # would print every per-step log dict
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    built = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    losses = [round(log["loss"], 5) for log in trainer.state.log_history if "loss" in log]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    side = SideResult("trl", counter.tokens, counter.positions, timer.seconds, wall,
                      f"SFTTrainer(...) (tokenise, attach LoRA: {built - started:.1f}s) + trainer.train() "
                      f"({output.metrics['train_runtime']:.1f}s)", losses, trainable)
    side.loss_after = mean_loss(trainer.model, base_tok, batch_size=settings.batch_size * 2,
                                pad_id=tokenizer.pad_token_id, bf16=bf16, desc="trl loss after")
    side.notes.extend(_trl_notes(trainer, base_tok, counter, trl_version, torch))
    return side, loss_before


def our_warmup_steps(settings: SFTConfig, n_rows: int) -> int:
    """Warm-up steps exactly as `sftjudge.train.loop.train` computes them (TRL would round a ratio up instead)."""
    import math

    steps_total = math.ceil(math.ceil(n_rows / settings.batch_size) / settings.grad_accum) * settings.epochs
    return int(settings.warmup_ratio * steps_total)


def _trl_config(settings: SFTConfig, workdir: Path, sampler: str, warmup_steps: int):
    import torch
    from trl import SFTConfig as TRLConfig

    return TRLConfig(
        output_dir=str(workdir / "trl"), num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, lr_scheduler_type="linear",
        warmup_steps=warmup_steps, max_grad_norm=1.0, seed=settings.seed, data_seed=settings.seed,
        bf16=settings.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=settings.gradient_checkpointing,  # TRL's default is True; ours is False
        max_length=settings.max_seq_len, packing=False, completion_only_loss=True,
        train_sampling_strategy=sampler, eval_strategy="no", save_strategy="no", report_to=[],
        logging_strategy="steps", logging_steps=1,  # ours records every step's loss too
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
    )


def _lora_config(model, settings: SFTConfig):
    """The LoraConfig `attach_adapters` builds: same r, alpha, dropout and the targets this model has."""
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=[m for m in settings.target_modules if m in present], task_type="CAUSAL_LM")


def _epoch_timer():
    """A Trainer callback summing the time between epoch begin and end: the training passes only.

    Built on call so that `--help` does not import transformers.
    """
    from transformers import TrainerCallback

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.seconds = 0.0
            self._begin = 0.0

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._begin = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._begin

    return EpochTimer()


class _CountingCollator:
    """Wraps TRL's collator to count non-padding tokens and padded positions of every training batch."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = 0
        self.positions = 0

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        self.tokens += int(mask.sum())
        self.positions += mask.numel()
        return batch


def _trl_notes(trainer, base_tok, counter: _CountingCollator, trl_version: str, torch) -> list[str]:
    """Cross-checks: same tokens and labels as ours, TRL's own token count, optimizer, autocast, checkpointing."""
    dataset = trainer.train_dataset
    theirs = list(zip(dataset["input_ids"], dataset["labels"]))
    ours = [(t.input_ids, t.labels) for t in base_tok]
    same = sum(a == b for a, b in zip(theirs, ours))
    logged = [log["num_tokens"] for log in trainer.state.log_history if "num_tokens" in log]
    args = trainer.args
    return [
        (f"trl {trl_version}: optimizer {getattr(args.optim, 'value', args.optim)}, sampler "
         f"{args.train_sampling_strategy}, gradient_checkpointing={args.gradient_checkpointing}, bf16={args.bf16}, "
         f"use_cpu={args.use_cpu}, warmup_steps={args.warmup_steps}, torch threads {torch.get_num_threads()}"),
        f"tokenisation: {same}/{len(ours)} training rows have identical input_ids and labels in TRL and ours"
        + ("" if len(theirs) == len(ours) else f" (TRL kept {len(theirs)} rows)"),
        f"trl token count: collator {counter.tokens}, TRL's own num_tokens metric {logged[-1] if logged else '?'}",
    ]


def print_table(ours: SideResult, trl: SideResult, loss_before: float) -> None:
    rows = [
        ("non-padding tokens trained on", f"{ours.tokens:,}", f"{trl.tokens:,}"),
        ("padded positions computed", f"{ours.padded_positions:,}", f"{trl.padded_positions:,}"),
        ("padding share", f"{1 - ours.tokens / ours.padded_positions:.1%}",
         f"{1 - trl.tokens / trl.padded_positions:.1%}"),
        ("optimizer steps", f"{len(ours.step_losses)}", f"{len(trl.step_losses)}"),
        ("trainable params", f"{ours.trainable_params:,}", f"{trl.trainable_params:,}"),
        ("training-pass seconds", f"{ours.train_seconds:.2f}", f"{trl.train_seconds:.2f}"),
        ("tokens/s (training passes)", f"{ours.tokens_per_second:,.1f}", f"{trl.tokens_per_second:,.1f}"),
        ("end-to-end wall seconds", f"{ours.wall_seconds:.2f}", f"{trl.wall_seconds:.2f}"),
        ("mean step loss (all steps)", _mean(ours.step_losses), _mean(trl.step_losses)),
        ("final step loss", f"{ours.step_losses[-1]:.4f}", f"{trl.step_losses[-1]:.4f}"),
        ("train-set loss after (same evaluator)", f"{ours.loss_after:.4f}", f"{trl.loss_after:.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'ours':>12}  {'trl':>12}")
    for label, a, b in rows:
        print(f"{label:<{width}}  {a:>12}  {b:>12}")
    print(f"train-set loss before training (same evaluator, both start here): {loss_before:.4f}")
    for side in (ours, trl):
        print(f"end-to-end {side.name}: {side.wall_covers}")
    for note in ours.notes + trl.notes:
        print(note)


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.4f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny random model in a temporary home, 16 rows, batch 4 (checks the bench runs)")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 64; 16 with --quick)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the rows (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default 8; 4 with --quick)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="token limit per row (default 256; 512 with --quick, whose tokenizer is byte-ish)")
    parser.add_argument("--model", default=FULL_MODEL, help=f"model for the full run (default {FULL_MODEL})")
    parser.add_argument("--trl-sampler", choices=["group_by_length", "random"], default="group_by_length",
                        help="TRL's batch sampler: length-grouped like ours (default) or TRL's default random")
    parser.add_argument("--order", choices=["ours-first", "trl-first"], default="ours-first",
                        help="which side trains first (default ours-first)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed for both sides (default 0)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (16 if args.quick else 64)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    args.max_seq_len = args.max_seq_len or (512 if args.quick else 256)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        apply_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        model_path = resolve_model("tiny" if args.quick else args.model,
                                   work / "home" if args.quick else sftjudge_home())
        settings = bench_settings(args)
        train_rows, val_rows = bench_rows(args.rows)
        _, tokenizer = load_causal_lm(model_path)
        base_tok = [tokenize_for_training(tokenizer, r, settings.max_seq_len) for r in train_rows]
        print(f"model {model_path}; {len(train_rows)} train rows (+{len(val_rows)} val rows, used by ours' "
              f"per-epoch eval only); batch {settings.batch_size}, {settings.epochs} epoch(s), max_seq_len "
              f"{settings.max_seq_len}, lr {settings.learning_rate}, LoRA r={settings.lora_r} "
              f"alpha={settings.lora_alpha} dropout={settings.lora_dropout}, precision {settings.precision}")
        if not args.no_warmup:
            warm_up(model_path, settings, train_rows)
        results: dict[str, SideResult] = {}
        loss_before = float("nan")
        for name in (["ours", "trl"] if args.order == "ours-first" else ["trl", "ours"]):
            if name == "ours":
                results[name] = run_ours(model_path, settings, train_rows, val_rows, work / "ours")
            else:
                results[name], loss_before = run_trl(model_path, settings, train_rows, work / "trl",
                                                     args.trl_sampler, base_tok)
            gc.collect()
    ours, trl = results["ours"], results["trl"]
    print_table(ours, trl, loss_before)
    print(f"order: {args.order}; warm-up: {'no' if args.no_warmup else 'one untimed forward+backward'}")
    print(f"ratio (ours/trl): {ours.tokens_per_second / trl.tokens_per_second:.2f}")


if __name__ == "__main__":
    main()
