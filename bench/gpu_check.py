"""One GPU check, no downloads: randomly initialised models of realistic shape through the project's own code.

For each shape (default 1.5b and 7b, Qwen2-like dimensions; `tiny` for the CPU test) it measures, in one run:

- matmul: a bf16 matrix product's FLOP/s, the ceiling the utilisation figures are measured against;
- lora: LoRA training steps with bf16 base weights through the sft stage's loss (train/batching.summed_token_loss,
  output layer at labelled positions only) under the stage's autocast: tokens/s, model-FLOP utilisation (4 x params
  FLOPs per token: forward plus the backward pass through the frozen weights) and peak memory beside the planner's
  estimate for the same settings;
- stage: the sft stage's own training (train/loop.train: TRL's SFTTrainer, LoRA on bf16 base weights, an epoch of
  synthetic rows, its per-epoch train/val loss and checkpoint): tokens/s of the training pass, model-FLOP
  utilisation, peak memory;
- full: full fine-tuning (float32 weights, bf16 autocast, AdamW) where the planner says it fits the card, else the
  planner's refusal; 6 x params FLOPs per token;
- qlora: the stage's QLoRA when bitsandbytes is installed (else why not): the model loaded 4-bit by the stage's
  own `load_student` and trained by the same `train` as `stage`;
- generate: batched greedy generation through generate/backends.TransformersGenerator: new tokens/s;
- judge: logprob judging through judge/logprob.LogprobJudge with the shipped reference-score definition: items/s;
- vllm: a `vllm serve` from vLLM's own environment with a LoRA adapter, asked through the generate stage's
  ServedGenerator for the adapter's and the base model's answers (bench/gpu_check_vllm.py): start-up seconds and
  new tokens/s; skipped, saying why, without a vLLM environment.

Sections are isolated: each records its error instead of stopping the run, and after each the memory is collected
and handed back (what the card had free before and after the section is recorded, so a section that leaks shows,
and the next one measures on a clean card). Writes one JSON (--out) and prints it. The tokenizer is the tiny test tokenizer trained on the spot (token ids stay below
its 400; the models keep their full vocabularies, so the output layer costs what it costs).

    python bench/gpu_check.py --out gpu_check.json                 # on the GPU machine, < 8 minutes on an H200
    python bench/gpu_check.py --shapes tiny --out /tmp/check.json  # on a CPU, seconds (the test suite does this)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_check_vllm import vllm_section  # noqa: E402

SHAPES = {  # Llama-architecture configs with the dimensions of Qwen2-1.5B and Qwen2-7B
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=400),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def section(results: dict, name: str, work) -> None:
    """Run one measurement; keep its numbers, or its error, under `name`; then collect and hand the memory back."""
    from sftjudge.runtime.memory import device_free
    from sftjudge.runtime.oom import free_memory

    before = device_free()
    started = time.perf_counter()
    try:
        results[name] = work()
    except Exception as exc:  # one broken section must not lose the others' numbers
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    results[name]["seconds"] = round(time.perf_counter() - started, 1)
    free_memory()  # outside the except block: a failed section's traceback no longer holds its model
    if before is not None:
        results[name]["gpu_left_in_use_bytes"] = max(0, before - device_free())
    print(f"  {name}: {json.dumps({k: v for k, v in results[name].items() if k != 'traceback'})}", flush=True)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def matmul_flops(size: int, repeats: int) -> dict:
    import torch

    from sftjudge.runtime.device import device

    a = torch.randn(size, size, device=device(), dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device(), dtype=torch.bfloat16)
    a @ b
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    seconds = time.perf_counter() - started
    return {"size": size, "tflops": round(2 * size ** 3 * repeats / seconds / 1e12, 3)}


def build(shape: str, dtype):
    """A randomly initialised model of `shape`, created directly on the device in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sftjudge.runtime.device import device

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, config


def batch(size: int, seq: int, vocab: int):
    """Random ids (below the tokenizer's 400) with the second half of each row labelled, as completions are."""
    import torch

    from sftjudge.runtime.device import device

    ids = torch.randint(3, min(vocab, 400), (size, seq), device=device())
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return ids, torch.ones_like(ids), labels


def train_steps(model, params, *, batch_size: int, seq: int, steps: int, vocab: int, flops_per_token: float,
                ceiling: float) -> dict:
    """Timed optimizer steps through the sft stage's loss, after one warm-up step."""
    import torch

    from sftjudge.runtime.device import autocast
    from sftjudge.train.batching import summed_token_loss

    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids, mask, labels = batch(batch_size, seq, vocab)

    def step():
        with autocast(True):
            loss, count = summed_token_loss(model, ids, mask, labels)
        (loss / max(count, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item() / max(count, 1)

    model.train()
    step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - started
    tokens_per_s = batch_size * seq * steps / seconds
    return {"batch": batch_size, "seq": seq, "steps": steps, "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(flops_per_token * tokens_per_s / (ceiling * 1e12), 4), "final_loss": round(loss, 4),
            "peak_bytes": peak_bytes()}


def planned(shape_name: str, config, method: str, batch_size: int, seq: int, weight_bytes: float) -> int:
    import torch

    from sftjudge.plan.estimate import Training, sft_estimate
    from sftjudge.plan.shape import shape_from_config

    shape = shape_from_config(shape_name, config, lora_r=16 if method == "lora" else 0, lora_targets=tuple(TARGETS))
    return sft_estimate(shape, Training(method=method, batch_size=batch_size, max_seq_len=seq, bf16=True,
                                        label_share=0.5, weight_bytes=weight_bytes),
                        cuda=torch.cuda.is_available()).total


def lora(shape: str, size: dict, ceiling: float, tokenizer) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    reset_peak()
    model, config = build(shape, torch.bfloat16)
    params_total = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.05))
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # adapters and their optimizer state in float32, as the stage keeps them
        p.data = p.data.float()
    out = train_steps(model, trainable, flops_per_token=4 * params_total, ceiling=ceiling, vocab=config.vocab_size,
                      **size)
    out |= {"params": params_total, "base_dtype": "bfloat16",
            "planned_bytes": planned(shape, config, "lora", size["batch_size"], size["seq"], 2)}
    del model
    return out


def stage(shape: str, size: dict, ceiling: float, tokenizer, quantization: str | None = None) -> dict:
    """The sft stage's training: `train` on a model built here, or with `quantization` loaded 4-bit by the stage's
    own `load_student` from a saved copy (QLoRA exactly as a run does it)."""
    import tempfile

    import torch

    from sftjudge.config import SFTConfig
    from sftjudge.curate.rows import ChatMessage, Example
    from sftjudge.train.loop import TrainData, train
    from sftjudge.train.stage import load_student

    sft = SFTConfig(epochs=1, batch_size=size["batch_size"], max_seq_len=size["seq"], precision="bf16", lora_r=16,
                    lora_alpha=32, target_modules=list(TARGETS), learning_rate=1e-4, warmup_ratio=0.0,
                    quantization=quantization)
    ask, answer = "Extract the ticket fields as JSON. My router stopped working. ", '{"intent": "bug_report"} '
    rows = [Example(id=str(i), messages=(ChatMessage(role="user", content=ask * (1 + i % 4)),
                                         ChatMessage(role="assistant", content=answer * (1 + i % 3))))
            for i in range(size["batch_size"] * (size["steps"] + 1))]
    with tempfile.TemporaryDirectory() as folder:
        model, _ = build(shape, torch.bfloat16)
        params_total = sum(p.numel() for p in model.parameters())
        if quantization:
            model.save_pretrained(Path(folder) / "base")
            tokenizer.save_pretrained(Path(folder) / "base")
            del model
            model, _ = load_student(str(Path(folder) / "base"), sft)
        reset_peak()
        result = train(model, tokenizer, TrainData(train=rows, val=rows[:2]), sft, Path(folder) / "checkpoints")
    epoch = result.epochs[0]
    del model
    return {"rows": len(rows), "tokens": epoch.target_tokens, "tokens_per_s": epoch.tokens_per_second,
            "mfu": round(4 * params_total * epoch.tokens_per_second / (ceiling * 1e12), 4),
            "train_loss": round(epoch.train_loss, 4), "val_loss": round(epoch.val_loss, 4),
            "precision": result.precision, "quantization": quantization, "peak_bytes": peak_bytes()}


def full(shape: str, size: dict, ceiling: float, free: int | None) -> dict:
    import torch
    from transformers import LlamaConfig

    from sftjudge.plan.estimate import gib

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    need = planned(shape, config, "full", size["batch_size"], size["seq"], 4)
    if free is not None and need > free:
        return {"skipped": f"the planner estimates {gib(need)} GiB for a full fine-tune; {gib(free)} GiB free",
                "planned_bytes": need}
    reset_peak()
    model, _ = build(shape, torch.float32)
    params_total = sum(p.numel() for p in model.parameters())
    out = train_steps(model, list(model.parameters()), flops_per_token=6 * params_total, ceiling=ceiling,
                      vocab=config.vocab_size, **size)
    del model
    return out | {"params": params_total, "planned_bytes": need}


def qlora(shape: str, size: dict, ceiling: float, tokenizer) -> dict:
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        return {"skipped": "bitsandbytes is not installed" if torch.cuda.is_available() else "needs CUDA"}
    return stage(shape, size, ceiling, tokenizer, quantization="4bit")


def generate(shape: str, tokenizer, prompts: int, new_tokens: int, batch_size: int) -> dict:
    import torch

    from sftjudge.generate.backends import GenerationParams, TransformersGenerator

    model, _ = build(shape, torch.bfloat16)
    model.generation_config.eos_token_id = None  # a random model would stop at random; every answer runs full length
    generator = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    texts = [f"Extract the support ticket fields as JSON. Message {i}: my router stopped working." * 4
             for i in range(prompts)]
    generator.generate(texts[:batch_size], GenerationParams(max_new_tokens=4))  # warm-up
    sync()
    started = time.perf_counter()
    out = generator.generate(texts, GenerationParams(max_new_tokens=new_tokens))
    sync()
    seconds = time.perf_counter() - started
    made = sum(g.completion_tokens for g in out)
    del model, generator
    return {"prompts": prompts, "batch": batch_size, "new_tokens": made,
            "new_tokens_per_s": round(made / seconds, 1)}


def judge(shape: str, tokenizer, items: int, batch_size: int) -> dict:
    import torch

    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.spec import load_judge

    model, _ = build(shape, torch.bfloat16)
    scorer = LogprobJudge(model, tokenizer, load_judge(REPO / "judges", "reference-score"), max_prompt_tokens=1024)
    rows = [{"id": str(i), "instruction": "Extract the support ticket fields as JSON. " * 6,
             "reference": '{"intent": "refund", "product": "smart speaker", "priority": "medium"}',
             "answer": '{"intent": "bug_report", "product": "router", "priority": "high"}' * (1 + i % 3)}
            for i in range(items)]
    scorer.score(rows[:batch_size], batch_size=batch_size)  # warm-up
    sync()
    started = time.perf_counter()
    judged = scorer.score(rows, batch_size=batch_size)
    sync()
    seconds = time.perf_counter() - started
    del model
    return {"items": items, "batch": batch_size, "items_per_s": round(items / seconds, 2),
            "scored": sum(j.score is not None for j in judged),
            "mean_prompt_tokens": round(sum(j.prompt_tokens for j in judged) / items, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1.5b,7b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args()

    import torch

    from sftjudge.models.tiny import build_tiny_tokenizer

    cuda = torch.cuda.is_available()
    tokenizer = build_tiny_tokenizer()
    report: dict = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "shapes": {}}
    print(f"gpu_check on {report['device']} (torch {torch.__version__})", flush=True)
    section(report, "matmul", lambda: matmul_flops(8192 if cuda else 256, 50 if cuda else 5))
    ceiling = report["matmul"].get("tflops") or 1.0
    for shape in args.shapes.split(","):
        small = shape == "tiny" or not cuda
        size = dict(batch_size=2, seq=64, steps=2) if small else dict(batch_size=4, seq=1024, steps=8)
        free = torch.cuda.mem_get_info()[0] if cuda else None
        results: dict = {}
        print(f"{shape}:", flush=True)
        section(results, "lora", lambda: lora(shape, size, ceiling, tokenizer))
        section(results, "stage", lambda: stage(shape, size, ceiling, tokenizer))
        section(results, "full", lambda: full(shape, size, ceiling, free))
        section(results, "qlora", lambda: qlora(shape, size, ceiling, tokenizer))
        section(results, "generate", lambda: generate(shape, tokenizer, 8 if small else 64, 8 if small else 128,
                                                      4 if small else 32))
        section(results, "judge", lambda: judge(shape, tokenizer, 4 if small else 64, 2 if small else 8))
        section(results, "vllm", lambda: vllm_section(SHAPES[shape], tokenizer, 8 if small else 64,
                                                      8 if small else 128, cuda))
        report["shapes"][shape] = results
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
