"""`sftjudge review` and `sftjudge release`: the human side of the cycle (see sftjudge/review/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sftjudge.config_yaml import load_config
from sftjudge.run import files

EXAMPLES = """
  sftjudge review RUN_ID                       # grade a sample of the run's answers at http://127.0.0.1:8765/
  sftjudge review RUN_ID --export labels.csv   # the sample for labelling elsewhere; --import labels.csv reads it
  sftjudge release RUN_ID                      # mark the champion released when its acceptance set passes"""


def add_parsers(sub) -> None:
    review = sub.add_parser("review", help="grade a sample of a run's answers in the browser; judge-human agreement")
    review.add_argument("run_id", help="run id (a unique prefix is enough)")
    review.add_argument("overrides", nargs="*", help="settings such as review.sample_size=30 (first review only)")
    review.add_argument("--runs-dir", default="runs")
    review.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    review.add_argument("--export", type=Path, metavar="FILE", help="write the sample (.jsonl or .csv) and exit")
    review.add_argument("--import", dest="import_file", type=Path, metavar="FILE",
                        help="read labels from an exported file, print the agreement and exit")
    review.add_argument("--agreement", action="store_true", help="print the agreement so far and exit")

    release = sub.add_parser("release", help="mark the champion released: its human-graded acceptance set passes")
    release.add_argument("run_id")
    release.add_argument("overrides", nargs="*", help="settings such as review.release_pass_rate=0.95")
    release.add_argument("--runs-dir", default="runs")


def _review(args: argparse.Namespace):
    from sftjudge.cli_common import find_run
    from sftjudge.review.server import Review
    from sftjudge.run.directory import RunDir

    path = find_run(args.runs_dir, args.run_id)
    # The registry is the one of the runs directory named on the command line, wherever the run was started.
    overrides = [f"runs_dir={args.runs_dir}", *getattr(args, "overrides", [])]
    return Review(RunDir(path), load_config(path / files.CONFIG, overrides))


def cmd_review(args: argparse.Namespace) -> int:
    from sftjudge.review.agreement import agreement_lines
    from sftjudge.review.server import serve

    review = _review(args)
    if args.export:
        rows = review.store.export(args.export)
        print(f"wrote {rows} items of the review sample of {review.run.run_id} to {args.export}; fill in passed "
              f"(pass/fail), grade (1-5), choice (first/second/tie) and note, then --import it")
        return 0
    if args.import_file:
        counts = review.store.import_file(args.import_file)
        print(f"imported {counts['labelled']} labels from {args.import_file} ({counts['left_empty']} rows left "
              f"empty, not counted)")
    if args.import_file or args.agreement:
        print("\n".join(agreement_lines(review.agreement())))
    else:
        serve(review, args.port)
    _refresh_report(review)
    return 0


def _refresh_report(review) -> None:
    """Rebuild the run's report so that it shows the agreement (a run not yet decided has none to rebuild)."""
    from sftjudge.decide.report import write_report

    if (review.run / files.DECISION).is_file():
        print(f"report updated: {write_report(review.run)}")


def cmd_release(args: argparse.Namespace) -> int:
    from sftjudge.review.release import release

    review = _review(args)
    usual = load_config(review.run / files.CONFIG, [f"runs_dir={args.runs_dir}"]).review
    record = release(review.run, review.config, usual)
    for name, change in record["bar"].get("lowered", {}).items():
        print(f"WARNING: the release bar was lowered on the command line: review.{name} {change['from']} -> "
              f"{change['to']} (the run's config says {change['from']}); recorded with the release",
              file=sys.stderr)
    _refresh_report(review)
    evidence = record["evidence"]
    print(f"released {review.run.run_id} at {record['released_at']}: the reviewer passed {evidence['passed']} of "
          f"{evidence['labelled']} acceptance items ({evidence['pass_rate']:.0%}; bar {record['bar']['pass_rate']:.0%} "
          f"on at least {record['bar']['min_items']}), sample {evidence['sample_sha256'][:12]}")
    return 0


COMMANDS = {"review": cmd_review, "release": cmd_release}
