"""Check that an exported run (`sftjudge export`) loads in vLLM and gives the run's greedy test answers.

    .venv/bin/python scripts/vllm_export_check.py runs/<run_id> /tmp/exported   # needs .cache/venv-vllm

The folder is served by a real vllm.LLM (CPU build, in the venv `make vllm-check` builds) in the dtype it was
exported in; each test prompt (as the generate stage rendered it, sent as token ids) is answered greedily with the
run's max_new_tokens and compared with the run's generations.jsonl. Prints the share of identical answers and the
first differences; exits 0 when every answer matches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VLLM_PYTHON = REPO / ".cache/venv-vllm/bin/python"


def worker(folder: str, prompts_file: Path, out: Path, max_new_tokens: int) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = json.loads((Path(folder) / "sftjudge-export.json").read_text())["dtype"]
    llm = LLM(model=folder, dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype], max_model_len=2048,
              gpu_memory_utilization=0.3)  # on the CPU backend: the share of RAM vLLM reserves
    prompts = json.loads(prompts_file.read_text())
    requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    outputs = llm.generate(requests, SamplingParams(max_tokens=max_new_tokens, temperature=0))
    out.write_text(json.dumps([o.outputs[0].text.strip() for o in outputs]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-new-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(str(args.folder), args.prompts, args.out, args.max_new_tokens)
        return 0
    from sftjudge.run import files
    from sftjudge.run.io import read_jsonl

    generations = read_jsonl(args.run / files.GENERATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.json", Path(tmp) / "answers.json"
        prompts.write_text(json.dumps([g["prompt"] for g in generations]))
        done = subprocess.run([str(VLLM_PYTHON), __file__, str(args.run), str(args.folder), "--worker", "--prompts",
                               str(prompts), "--out", str(out), "--max-new-tokens",
                               str(generations[0]["params"]["max_new_tokens"])])
        if done.returncode != 0:
            print(f"FAIL: the vLLM worker exited with status {done.returncode}")
            return 1
        answers = json.loads(out.read_text())
    same = [a == g["text"] for a, g in zip(answers, generations)]
    print(f"vLLM on the exported folder: {sum(same)}/{len(same)} greedy answers identical to the run's")
    for answer, g, ok in list(zip(answers, generations, same)):
        if not ok:
            print(f"  {g['id']}: run {g['text'][:80]!r}\n  {' ' * len(g['id'])}  vLLM {answer[:80]!r}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
