"""`sftjudge export`: a run's chosen checkpoint (or the champion's) as a folder serving tools load as is."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """
  sftjudge export RUN_ID out/model             # LoRA merged, bf16 safetensors, tokenizer, model card
  sftjudge export --champion out/champion      # the current champion"""


def add_parsers(sub) -> None:
    export = sub.add_parser("export", help="write a run's chosen checkpoint as a standalone model folder (LoRA "
                                           "merged, safetensors, tokenizer, chat template, model card)")
    export.add_argument("paths", nargs="+", metavar="RUN_ID OUT", help="run id (a unique prefix) and the folder to "
                                                                       "write; with --champion only the folder")
    export.add_argument("--champion", action="store_true", help="export the current champion")
    export.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="weights' dtype (default bf16; the run's own answers are reproduced greedily in the "
                             "dtype it generated with)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.add_argument("--runs-dir", default="runs")


def cmd_export(args: argparse.Namespace) -> int:
    from sftjudge.cli_common import find_run, registry
    from sftjudge.config_yaml import load_config
    from sftjudge.errors import RegistryError
    from sftjudge.export.merge import export_run
    from sftjudge.models.embedded import sftjudge_home
    from sftjudge.run import files

    if args.champion:
        if len(args.paths) != 1:
            raise SystemExit("sftjudge export --champion OUT: give only the output folder")
        champion = registry(args.runs_dir).champion()
        if not champion:
            raise RegistryError(f"no champion in {args.runs_dir}: promote a run first (or export a run by id)")
        run, out = Path(champion["run_dir"]), Path(args.paths[0])
    else:
        if len(args.paths) != 2:
            raise SystemExit("sftjudge export RUN_ID OUT: give the run and the output folder")
        run, out = find_run(args.runs_dir, args.paths[0]), Path(args.paths[1])
    home = sftjudge_home(load_config(run / files.CONFIG).home)
    written = export_run(run, out, home, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported {run.name} to {written} ({args.dtype}); load it with AutoModelForCausalLM.from_pretrained"
          f"({str(written)!r}) or `vllm serve {written}`")
    return 0


COMMANDS = {"export": cmd_export}
