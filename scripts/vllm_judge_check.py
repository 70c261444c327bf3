"""Check judge.backend=vllm on the real vLLM engine: the engine's label probabilities against the in-process judge.

    .venv/bin/python scripts/vllm_judge_check.py   # needs .cache/venv-vllm (make vllm-check builds it)

Run from the project venv, this script scores a few items with the embedded student (SmolLM2-135M-Instruct, fp32)
as a logprob judge in process - pointwise, rubric and pairwise - then runs itself again inside the vLLM venv
(`--worker`), where judge/engine.py scores the same items on a real vllm.LLM (CPU build, fp32, top 20 logprobs),
and compares: every label probability the engine returned must match (|diff| <= 1e-3), a label it did not return
must be one the in-process judge puts under 0.02, and a score read with the whole label mass must match within
0.01. It also checks that a text judge on the same engine gets a score or a reason. Prints the differences and
PASS or FAIL (exit status 0 or 1).
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
ITEMS = [{"id": f"q{i}", "instruction": q, "reference": r, "answer": a} for i, (q, r, a) in enumerate([
    ("What is 6 times 7?", "42", "42"),
    ("What is 6 times 7?", "42", "It is 48, because six sevens are forty-eight."),
    ("Name the capital of France.", "Paris", "Paris is the capital of France."),
    ("Name the capital of France.", "Paris", "I like trains and long walks by the river."),
    ("Extract the ticket as JSON.", '{"intent": "billing", "urgent": false}', '{"intent": "billing", "urgent": false}'),
    ("Extract the ticket as JSON.", '{"intent": "billing", "urgent": false}', ""),
])]
PAIRS = [{"id": f"p{n}", "instruction": a["instruction"], "reference": a["reference"], "answer_a": x["answer"],
          "answer_b": y["answer"]} for n, (a, x, y) in enumerate(
              [(ITEMS[0], ITEMS[0], ITEMS[1]), (ITEMS[2], ITEMS[3], ITEMS[2])])]
JUDGES = (("reference-score", ITEMS), ("rubric", ITEMS), ("pairwise", PAIRS))


def as_json(judgments) -> list[dict]:
    return [{"id": j.id, "score": j.score, "choice": j.choice, "label_mass": j.label_mass,
             "distribution": j.distribution, "dimensions": j.dimensions, "unparseable": j.unparseable}
            for j in judgments]


def student() -> str:
    from sftjudge.models.embedded import resolve_model, sftjudge_home

    return resolve_model("smollm2-135m-instruct", sftjudge_home())


def worker(model_dir: str, out: Path) -> None:
    """Inside the vLLM venv: the engine judges, then a text judge on the same engine."""
    from transformers import AutoTokenizer

    from sftjudge.generate.backends import VLLMGenerator
    from sftjudge.judge.engine import EngineLogprobJudge, EngineRubricJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.judge.text import TextJudge
    from sftjudge.models.loading import with_pad

    tok = with_pad(AutoTokenizer.from_pretrained(model_dir))
    # On the CPU backend gpu_memory_utilization is the share of RAM vLLM reserves: a little is plenty here.
    engine = VLLMGenerator(model_dir, tokenizer=tok, engine_kwargs={"dtype": "float32", "max_logprobs": 20,
                                                                    "max_model_len": 2048,
                                                                    "gpu_memory_utilization": 0.3})
    results = {}
    for name, items in JUDGES:
        spec = load_judge(REPO / "judges", name)
        kind = EngineRubricJudge if spec.kind == "rubric" else EngineLogprobJudge
        results[name] = as_json(kind(engine.llm, tok, spec, top_logprobs=20).score(items))
    text = TextJudge(engine, tok, load_judge(REPO / "judges", "reference-score")).score(ITEMS)
    results["text"] = as_json(text)
    engine.close()
    out.write_text(json.dumps(results))


def compare(here: dict, there: dict) -> bool:
    ok = True
    for name, _ in JUDGES:
        worst, compared, outside, dims = 0.0, 0, 0, []
        for a, b in zip(here[name], there[name]):
            mass_a, mass_b = a["label_mass"] or 0.0, b["label_mass"] or 0.0
            for label, p in a["distribution"].items():
                mine = p * mass_a
                theirs = b["distribution"].get(label, 0.0) * mass_b
                if theirs:
                    compared += 1
                    worst = max(worst, abs(theirs - mine))
                    if abs(theirs - mine) > 1e-3:
                        print(f"  {name} {a['id']} label {label}: in process {mine:.4f}, engine {theirs:.4f}")
                        ok = False
                elif mine >= 0.02:
                    print(f"  {name} {a['id']} label {label}: {mine:.4f} in process, not among the engine's top 20")
                    ok = False
                else:
                    outside += 1
            if a["score"] is not None and b["score"] is not None and abs(mass_a - mass_b) < 1e-3:
                if abs(a["score"] - b["score"]) > 0.01:
                    print(f"  {name} {a['id']}: score {a['score']:.4f} in process, {b['score']:.4f} engine")
                    ok = False
            for dim, value in (a.get("dimensions") or {}).items():
                theirs = (b.get("dimensions") or {}).get(dim)
                if theirs is not None:
                    dims.append(abs(theirs - value))
                if theirs is not None and abs(mass_a - mass_b) < 1e-3 and abs(theirs - value) > 0.02:
                    print(f"  {name} {a['id']} {dim}: {value:.4f} in process, {theirs:.4f} engine")
                    ok = False
        print(f"{name}: {compared} label probabilities returned by the engine, largest difference {worst:.2e}; "
              f"{outside} outside its top 20 (each under 0.02 in process); {len(here[name])} items"
              + (f"; {len(dims)} dimension scores, largest difference {max(dims):.2e}" if dims else ""))
    for j in there["text"]:
        if (j["score"] is None) == (j["unparseable"] is None):
            print(f"  text {j['id']}: neither a score nor a reason")
            ok = False
    print(f"text judge on the same engine: {sum(j['score'] is not None for j in there['text'])} scored, "
          f"{sum(j['unparseable'] is not None for j in there['text'])} with a reason")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--vllm-python", default=str(VLLM_PYTHON))
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.out)
        return 0
    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.rubric import RubricJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.models.loading import load_causal_lm

    model_dir = student()
    model, tok = load_causal_lm(model_dir, dtype_name="float32")
    here = {}
    for name, items in JUDGES:
        spec = load_judge(REPO / "judges", name)
        kind = RubricJudge if spec.kind == "rubric" else LogprobJudge
        here[name] = as_json(kind(model, tok, spec).score(items))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "engine.json"
        done = subprocess.run([args.vllm_python, __file__, "--worker", "--model", model_dir, "--out", str(out)])
        if done.returncode != 0:
            print(f"FAIL: the vLLM worker exited with status {done.returncode} (its output is above)")
            return 1
        there = json.loads(out.read_text())
    ok = compare(here, there)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM starts worker processes that re-import this file
    sys.exit(main())
