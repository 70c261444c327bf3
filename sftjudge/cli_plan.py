"""`sftjudge plan`: will a configuration fit the device, stage by stage, before anything is loaded."""

from __future__ import annotations

import argparse
import math
import json

from sftjudge.config_yaml import load_config

EXAMPLES = """
  sftjudge plan configs/demo.yaml              # peak memory of sft, generate and judge on this machine
  sftjudge plan configs/gpu.yaml --gpu-gib 24  # ... on a 24 GiB card, planned from here"""


def add_parsers(sub) -> None:
    plan = sub.add_parser("plan", help="estimate each model stage's peak memory and say whether it fits, with "
                                       "settings that would when it does not")
    plan.add_argument("config", nargs="?", help="YAML run config (default: built-in defaults)")
    plan.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides")
    plan.add_argument("--gpu-gib", type=float, metavar="GIB", help="plan for a GPU with this much free memory")
    plan.add_argument("--cpu-gib", type=float, metavar="GIB", help="plan for a CPU machine with this much free RAM")
    plan.add_argument("--json", action="store_true", help="print JSON")


def cmd_plan(args: argparse.Namespace) -> int:
    """Exit 0 when every stage fits, 3 when one does not (its message names settings that would)."""
    from sftjudge.models.embedded import sftjudge_home
    from sftjudge.plan.check import STAGES, Planner, Target

    if args.gpu_gib is not None and args.cpu_gib is not None:
        raise SystemExit("sftjudge plan: give --gpu-gib or --cpu-gib, not both")
    for flag, size in (("--gpu-gib", args.gpu_gib), ("--cpu-gib", args.cpu_gib)):
        if size is not None and not (math.isfinite(size) and size > 0):
            raise SystemExit(f"sftjudge plan: {flag} is the free memory in GiB, a positive number; got {size:g}")
    config = load_config(args.config, args.overrides)
    if args.gpu_gib is not None:
        target = Target.here(args.gpu_gib, cuda=True)
    elif args.cpu_gib is not None:
        target = Target.here(args.cpu_gib, cuda=False)
    else:
        target = Target.here()
    planner = Planner(config, sftjudge_home(config.home), target)
    plans = [p for p in (planner.plan(stage) for stage in STAGES) if p is not None]
    if args.json:
        print(json.dumps({"target": {"name": target.name, "cuda": target.cuda, "free_bytes": target.free},
                          "stages": [{"stage": p.stage, "fits": p.fits, "bytes": p.estimate.total,
                                      "parts": p.estimate.parts, "limit_bytes": p.limit,
                                      "suggestions": [c for c, _ in p.suggestions]} for p in plans]}, indent=2))
    else:
        print(f"memory plan for {target.name}:")
        for p in plans:
            print(f"  {p.message(target)}")
    return 0 if all(p.fits for p in plans) else 3


COMMANDS = {"plan": cmd_plan}
