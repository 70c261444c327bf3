"""The sft stage (TRL's SFTTrainer, sftjudge/train/) against the hand-written loop it replaced, side by side in one run.

    .venv/bin/python bench/sft.py               # SmolLM2-135M-Instruct, 64 rows, 1 epoch, batch 8, LoRA r16
    .venv/bin/python bench/sft.py --quick       # tiny random model, 16 rows: checks the bench runs
    .venv/bin/python bench/sft.py --trl-default # also TRL's SFTTrainer with its own loss and defaults

Both sides train the same rows, tokenised the same way (completion-only labels), in the same length-grouped
batches, with the same LoRA settings, learning rate, linear schedule, clipping, batch size, epochs and seed:
- loop: the training pass of sftjudge's old hand-written loop (kept here as the reference): float32 weights under
  bf16 autocast, the output layer applied to labelled positions only, AdamW, one micro-batch mean per step;
- stage: `sftjudge.train.loop.train` as the sft stage calls it: SFTTrainer with the labelled-positions loss,
  LoRA on bf16 base weights (where bf16 is fast), the grouped sampler; it also measures train/val loss and writes a
  checkpoint per epoch, which its tokens/s leaves out (its training-pass seconds come from each epoch's metrics);
- trl-default (optional): SFTTrainer with its own loss (every position through the output layer, entropy and token
  accuracy per step) on the same prompt/completion rows, as a user would first set it up.

tokens/s = non-padding tokens of the training batches / seconds of the training passes. Model-FLOP utilisation:
4 x (base parameters) FLOPs per token (forward, and the backward to activations; LoRA's weight gradients are
negligible), against a bf16 matrix product timed in the same run. The last line is ``ratio (stage/loop): X.XX``;
the goal is >= 0.9. Run alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
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
from sftjudge.train.batching import collate, length_grouped_batches, mean_loss, summed_token_loss  # noqa: E402
from sftjudge.train.loop import TrainData, attach_adapters, lora_config, train  # noqa: E402

DATA = ROOT / "data" / "sample" / "support_tickets.jsonl"
FULL_MODEL = "smollm2-135m-instruct"


@dataclass
class Side:
    name: str
    tokens: int  # non-padding tokens of the training batches
    train_seconds: float  # the training passes only
    step_losses: list[float]
    loss_after: float  # the training rows' loss after training, same evaluator for every side
    base_params: int
    note: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


def bench_rows(rows: int) -> tuple[list[Example], list[Example]]:
    """First `rows` good rows of the sample and a few following ones as val (the stage measures val loss)."""
    kept = load_rows(DATA)[0].kept
    need = rows + max(2, rows // 8)
    if len(kept) < need:
        raise SystemExit(f"{DATA} has {len(kept)} good rows; --rows {rows} needs {need} (train + val)")
    return kept[:rows], kept[rows:need]


def run_loop(model_path: str, sft: SFTConfig, tok_rows: list) -> Side:
    """The old loop's training pass: same batches (length-grouped from the seed), loss, clipping, AdamW, schedule."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    model, tokenizer = load_causal_lm(model_path)
    torch.manual_seed(sft.seed)
    model = attach_adapters(model, sft)
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sft.learning_rate, weight_decay=sft.weight_decay)
    micro = math.ceil(len(tok_rows) / sft.batch_size)
    total = math.ceil(micro / sft.grad_accum) * sft.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(sft.warmup_ratio * total), total)
    bf16, losses, tokens, seconds = sft.precision == "bf16", [], 0, 0.0
    model.train()
    for epoch in range(sft.epochs):
        batches = length_grouped_batches([len(t.input_ids) for t in tok_rows], sft.batch_size,
                                         random.Random(f"{sft.seed}:{epoch}"))
        started = time.perf_counter()
        for i, batch in enumerate(batches, start=1):
            ids, mask, labels = collate([tok_rows[j] for j in batch], tokenizer.pad_token_id)
            with autocast(bf16):
                loss_sum, n = summed_token_loss(model, ids, mask, labels)
            loss = loss_sum / max(n, 1)
            (loss / sft.grad_accum).backward()
            if i % sft.grad_accum == 0 or i == len(batches):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 5))
            tokens += int(mask.sum())
        seconds += time.perf_counter() - started
    after = mean_loss(model, tok_rows, batch_size=sft.batch_size * 2, pad_id=tokenizer.pad_token_id, bf16=bf16,
                      desc="loop loss after")
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    return Side("loop", tokens, seconds, losses, after, base, f"base weights {dtype}, autocast bf16={bf16}")


def run_stage(model_path: str, sft: SFTConfig, train_rows, val_rows, tok_rows, work: Path) -> Side:
    """`sftjudge.train.loop.train` as the sft stage calls it (bf16 base weights for LoRA where bf16 is fast)."""
    from sftjudge.train.stage import load_student

    model, tokenizer = load_student(model_path, sft)
    result = train(model, tokenizer, TrainData(train=train_rows, val=val_rows), sft, work / "checkpoints")
    tokens = sum(m.target_tokens for m in result.epochs)
    seconds = sum(m.target_tokens / m.tokens_per_second for m in result.epochs)
    after = mean_loss(model, tok_rows, batch_size=sft.batch_size * 2, pad_id=tokenizer.pad_token_id,
                      bf16=result.precision == "bf16", desc="stage loss after")
    dtype = next(p for n, p in model.named_parameters() if "lora_" not in n).dtype
    return Side("stage", tokens, seconds, [s for m in result.epochs for s in m.step_losses], after,
                result.total_params - result.trainable_params, f"base weights {dtype}, precision {result.precision}")


def run_trl_default(model_path: str, sft: SFTConfig, train_rows, tok_rows, work: Path) -> Side:
    """SFTTrainer with its own loss and defaults on prompt/completion rows (no gradient checkpointing, grouped
    batches, as the other sides), timed between its epoch-begin and epoch-end callbacks."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig as TrlConfig
    from trl import SFTTrainer

    class Timer(TrainerCallback):
        seconds, begin = 0.0, 0.0

        def on_epoch_begin(self, args, state, control, **kwargs):
            Timer.begin = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            Timer.seconds += time.perf_counter() - Timer.begin

    model, tokenizer = load_causal_lm(model_path)
    data = Dataset.from_list([{"prompt": r.prompt_messages, "completion": [{"role": "assistant",
                                                                             "content": r.completion}]}
                              for r in train_rows])
    micro = math.ceil(len(train_rows) / sft.batch_size)
    args = TrlConfig(output_dir=str(work / "trl"), num_train_epochs=sft.epochs,
                     per_device_train_batch_size=sft.batch_size, gradient_accumulation_steps=sft.grad_accum,
                     learning_rate=sft.learning_rate, lr_scheduler_type="linear", seed=sft.seed,
                     warmup_steps=int(sft.warmup_ratio * math.ceil(micro / sft.grad_accum) * sft.epochs),
                     bf16=sft.precision == "bf16", use_cpu=not torch.cuda.is_available(),
                     gradient_checkpointing=False, max_length=sft.max_seq_len, completion_only_loss=True,
                     train_sampling_strategy="group_by_length", save_strategy="no", report_to=[],
                     logging_strategy="steps", logging_steps=1, disable_tqdm=True, dataloader_pin_memory=False)
    torch.manual_seed(sft.seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(model, sft), callbacks=[Timer()])
    trainer.train()
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * sft.epochs
    after = mean_loss(trainer.model, tok_rows, batch_size=sft.batch_size * 2, pad_id=tokenizer.pad_token_id,
                      bf16=sft.precision == "bf16", desc="trl loss after")
    losses = [round(log["loss"], 5) for log in trainer.state.log_history if "loss" in log]
    base = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
    return Side("trl-default", tokens, Timer.seconds, losses, after, base, "SFTTrainer's own loss and metrics")


def matmul_flops(bf16: bool, seconds: float = 3.0) -> float:
    """FLOP/s of a 1024^3 matrix product in the training precision, timed here: the machine's reachable peak."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return count * 2 * 1024 ** 3 / (time.perf_counter() - started)


def report(sides: list[Side], peak: float, loss_before: float) -> None:
    width = 34
    print(f"\n{'':<{width}}" + "".join(f"{s.name:>14}" for s in sides))
    rows = [("non-padding tokens trained on", [f"{s.tokens:,}" for s in sides]),
            ("training-pass seconds", [f"{s.train_seconds:.2f}" for s in sides]),
            ("tokens/s (training passes)", [f"{s.tokens_per_second:,.1f}" for s in sides]),
            ("model-FLOP utilisation", [f"{4 * s.base_params * s.tokens_per_second / peak:.1%}" for s in sides]),
            ("steps logged", [f"{len(s.step_losses)}" for s in sides]),
            ("mean step loss", [f"{sum(s.step_losses) / len(s.step_losses):.4f}" for s in sides]),
            ("train-set loss after (same evaluator)", [f"{s.loss_after:.4f}" for s in sides])]
    for label, values in rows:
        print(f"{label:<{width}}" + "".join(f"{v:>14}" for v in values))
    print(f"train-set loss before training: {loss_before:.4f}; matrix-product peak here {peak / 1e9:.1f} GFLOP/s")
    for side in sides:
        print(f"{side.name}: {side.note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, 16 rows, batch 4")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 64; 16 with --quick)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the rows (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default 8; 4 with --quick)")
    parser.add_argument("--max-seq-len", type=int, default=256, help="token limit per row (default 256)")
    parser.add_argument("--model", default=FULL_MODEL, help=f"student (default {FULL_MODEL})")
    parser.add_argument("--order", choices=["loop-first", "stage-first"], default="loop-first")
    parser.add_argument("--trl-default", action="store_true", help="also time SFTTrainer with its own defaults")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (16 if args.quick else 64)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    return args


def main(argv: list[str] | None = None) -> None:
    import os

    import torch

    args = parse_args(argv)
    if args.threads:
        apply_threads(args.threads)
    sft = SFTConfig(epochs=args.epochs, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                    precision="bf16" if bf16_supported() else "fp32", keep_checkpoints="best_and_last")
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        model_path = resolve_model("tiny" if args.quick else args.model,
                                   work / "home" if args.quick else sftjudge_home())
        train_rows, val_rows = bench_rows(args.rows)
        model, tokenizer = load_causal_lm(model_path)
        tok_rows = [tokenize_for_training(tokenizer, r, sft.max_seq_len) for r in train_rows]
        loss_before = mean_loss(model, tok_rows, batch_size=sft.batch_size * 2, pad_id=tokenizer.pad_token_id,
                                bf16=sft.precision == "bf16", desc="loss before")
        del model
        print(f"model {model_path}; {len(train_rows)} rows (+{len(val_rows)} val for the stage's eval); batch "
              f"{sft.batch_size}, {sft.epochs} epoch(s), max_seq_len {sft.max_seq_len}, lr {sft.learning_rate}, "
              f"LoRA r={sft.lora_r}, precision {sft.precision}; torch threads {torch.get_num_threads()}, load "
              f"{os.getloadavg()[0]:.2f}")
        run_loop(model_path, sft.model_copy(update={"epochs": 1}), tok_rows[:sft.batch_size])  # warm-up, untimed
        order = ["loop", "stage"] if args.order == "loop-first" else ["stage", "loop"]
        sides = {}
        for name in order + (["trl-default"] if args.trl_default else []):
            if name == "loop":
                sides[name] = run_loop(model_path, sft, tok_rows)
            elif name == "stage":
                sides[name] = run_stage(model_path, sft, train_rows, val_rows, tok_rows, work / "stage")
            else:
                sides[name] = run_trl_default(model_path, sft, train_rows, tok_rows, work)
            gc.collect()
        peak = matmul_flops(sft.precision == "bf16")
    report([sides[n] for n in ("loop", "stage", "trl-default") if n in sides], peak, loss_before)
    same = sides["loop"].tokens == sides["stage"].tokens
    print(f"identical token counts (loop vs stage): {'yes' if same else 'NO'}; order {args.order}; load "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"ratio (stage/loop): {sides['stage'].tokens_per_second / sides['loop'].tokens_per_second:.2f}")


if __name__ == "__main__":
    main()
