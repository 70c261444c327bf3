"""Two flow runs on one box: what each pays for the other, with every core each (torch's default) and with the
thread budget (sftjudge/runtime/threads.py: cores // runs per worker).

For each workload - judge forward passes (batch 4 x 384 tokens, no gradient) and LoRA training steps (batch 8 x 128
tokens, forward + backward + AdamW) on the embedded SmolLM2-135M - it times, side by side in one run:

1. one process alone with every core (what a run takes on an idle worker);
2. two processes at once, each with every core (two runs on a pool with no budget);
3. two processes at once, each with its budget (SFTJUDGE_RUNS_PER_WORKER=2).

and prints each of 2 and 3 as a multiple of 1. Goal: the budget keeps each run at <= 2.2x its time alone (sharing
two cores cannot cost less than 2x). The processes load their model first and start timing together (a barrier).

    python bench/contention.py [--model smollm2-135m-instruct] [--passes 6] [--steps 4] [--workloads judge,train]

Run it alone on a quiet machine (`uptime` load < 1).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _child(workload: str, model_name: str, threads: int, repeats: int, barrier, results) -> None:
    """One flow run's worth of torch work: load, wait for the others, then time `repeats` units of work."""
    from sftjudge.runtime.threads import apply_threads

    apply_threads(threads)  # before any torch work, as run_stage does
    import torch

    from sftjudge.models.embedded import resolve_model, sftjudge_home
    from sftjudge.models.loading import load_causal_lm

    torch.manual_seed(0)
    model, _ = load_causal_lm(resolve_model(model_name, sftjudge_home()))
    if workload == "judge":
        model = model.to(torch.bfloat16).eval()
        ids = torch.randint(100, 20000, (4, 384))

        def unit():
            with torch.no_grad():
                model(input_ids=ids, logits_to_keep=2)
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model.float(), LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(100, 20000, (8, 128))

        def unit():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    unit()  # warm-up: first-call allocations and kernel choices are not what we measure
    barrier.wait()
    started = time.perf_counter()
    for _ in range(repeats):
        unit()
    results.put((os.getpid(), time.perf_counter() - started))


def timed(workload: str, model: str, threads: list[int], repeats: int) -> list[float]:
    """Seconds each of len(threads) processes took for the same work, started together."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(threads)), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(workload, model, t, repeats, barrier, results)) for t in threads]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=1800)[1] for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            sys.exit(f"a {workload} process failed (exit code {proc.exitcode})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or a local folder")
    parser.add_argument("--passes", type=int, default=6, help="judge forward passes per process")
    parser.add_argument("--steps", type=int, default=4, help="training steps per process")
    parser.add_argument("--workloads", default="judge,train")
    args = parser.parse_args()

    from sftjudge.runtime.threads import thread_budget, usable_cores

    cores = usable_cores()
    budget = thread_budget(cores, 2)
    load = os.getloadavg()[0]
    print(f"{cores} usable cores; budget for 2 runs per worker: {budget} thread(s) each; load before: {load:.2f}")
    rows = []
    for workload in args.workloads.split(","):
        repeats = args.passes if workload == "judge" else args.steps
        alone = timed(workload, args.model, [cores], repeats)[0]
        crowded = timed(workload, args.model, [cores, cores], repeats)
        budgeted = timed(workload, args.model, [budget, budget], repeats)
        rows.append((workload, repeats, alone, crowded, budgeted))
        print(f"  {workload}: alone {alone:.1f} s; two with {cores} threads each {max(crowded):.1f} s; "
              f"two with {budget} each {max(budgeted):.1f} s", flush=True)
    print(f"\ncontention on {args.model} ({cores} cores), slower of the two processes / one alone:")
    print(f"  {'workload':10s} {'units':>5s} {'alone s':>8s} {'all cores each':>15s} {'budget each':>12s}")
    for workload, repeats, alone, crowded, budgeted in rows:
        print(f"  {workload:10s} {repeats:5d} {alone:8.1f} {max(crowded) / alone:14.2f}x "
              f"{max(budgeted) / alone:11.2f}x   (goal <= 2.2x; mean of the two "
              f"{statistics.fmean(budgeted) / alone:.2f}x)")


if __name__ == "__main__":
    main()
