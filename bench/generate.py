"""Benchmark generation: one-by-one HF `model.generate` (batch 1) against our batched backend, in one run.

    .venv/bin/python bench/generate.py --quick          # tiny random model, 16 prompts, under a minute
    .venv/bin/python bench/generate.py                  # SmolLM2-135M-Instruct, 32 prompts (a few minutes)

Both sides answer the same chat-rendered prompts (the sample support tickets) with the same loaded model, in
the same dtype (bf16 when this CPU does it fast; fp32 for the tiny model), greedily. Only generated tokens are
counted, the end-of-turn token included. The tiny model's random weights never emit the end-of-turn token, so
both sides generate exactly --max-new-tokens per prompt there; the real model stops when its answer ends. The
last line is ``ratio: X.XX`` (batched tokens/s over one-by-one tokens/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from sftjudge.generate.backends import GenerationParams, TransformersGenerator  # noqa: E402
from sftjudge.models.chat import render_prompt  # noqa: E402
from sftjudge.models.embedded import resolve_model, sftjudge_home  # noqa: E402
from sftjudge.runtime.device import use_bf16  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "support_tickets.jsonl"


def load_prompts(tokenizer, count: int) -> list[str]:
    """The first `count` sample instructions, rendered with the model's chat template (repeated if short)."""
    instructions = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        # The sample plants broken rows for curation to catch; a benchmark only wants the well-formed ones.
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
            instructions.append(row["prompt"])
    return [render_prompt(tokenizer, [{"role": "user", "content": instructions[i % len(instructions)]}])
            for i in range(count)]


def one_by_one(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[int, float]:
    """Plain `model.generate` per prompt, batch 1: (generated tokens, seconds)."""
    import torch

    tokens, started = 0, time.perf_counter()
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                                 temperature=None, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        # Up to and including the end-of-turn token, as the backend counts (and vLLM).
        tokens += new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
    return tokens, time.perf_counter() - started


def batched(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> tuple[int, float]:
    """Our TransformersGenerator (length-sorted, left-padded batches): (generated tokens, seconds)."""
    generator = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    started = time.perf_counter()
    generations = generator.generate(prompts, GenerationParams(max_new_tokens=max_new_tokens))
    return sum(g.completion_tokens for g in generations), time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model built in a temp dir")
    parser.add_argument("--prompts", type=int, help="prompts answered by each side (default 32, quick 16)")
    parser.add_argument("--max-new-tokens", type=int, help="per answer (default 64, quick 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="batched backend's batch size (default 16)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model when not --quick")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (16 if args.quick else 32)
    args.max_new_tokens = args.max_new_tokens or (32 if args.quick else 64)

    import torch

    from sftjudge.models.loading import load_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_model("tiny", Path(tmp)) if args.quick else resolve_model(args.model, sftjudge_home())
        model, tokenizer = load_causal_lm(path)
    # The backend's choice (bf16 where this CPU does it fast) for the real model. The tiny model is all per-step
    # overhead and no matmul, where bf16 only adds casts (2x slower here), so --quick stays in fp32.
    dtype = torch.bfloat16 if use_bf16("auto") and not args.quick else torch.float32
    model = model.to(dtype).eval()
    prompts = load_prompts(tokenizer, args.prompts)
    print(f"model {'tiny' if args.quick else args.model} ({dtype}), {len(prompts)} prompts, "
          f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}, {torch.get_num_threads()} threads")
    # One short warm-up call each, so neither side pays first-call set-up inside its timing.
    one_by_one(model, tokenizer, prompts[:1], 2)
    batched(model, tokenizer, prompts[:2], 2, args.batch_size)

    single_tokens, single_seconds = one_by_one(model, tokenizer, prompts, args.max_new_tokens)
    single_rate = single_tokens / single_seconds
    print(f"one-by-one HF generate: {single_tokens} tokens in {single_seconds:.1f}s = {single_rate:.1f} tok/s")
    batch_tokens, batch_seconds = batched(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    batch_rate = batch_tokens / batch_seconds
    print(f"batched backend:        {batch_tokens} tokens in {batch_seconds:.1f}s = {batch_rate:.1f} tok/s")
    print(f"ratio: {batch_rate / single_rate:.2f}")


if __name__ == "__main__":
    main()
