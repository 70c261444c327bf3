"""Bad input and faults, round three (issue 26): the surfaces added since round two - the HTML report, the served
judge, export, the registry rebuild, review - each fix with the reproduction that failed before it."""

from __future__ import annotations

import json
import re

import pytest

from sftjudge.run import files
from sftjudge.run.io import read_jsonl, write_jsonl

from .faultkit import clone_run

PAYLOADS = ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "[click](javascript:alert(3))",
            "<a href='javascript:alert(4)'>x</a>")


def test_the_html_report_shows_hostile_data_and_answers_as_text(base_run, tmp_path):
    from sftjudge.config_yaml import load_config
    from sftjudge.decide.report import write_html
    from sftjudge.decide.stage import decide_stage
    from sftjudge.run.directory import RunDir

    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "xss", reset=("decide",))
    run = RunDir(run_path)
    manifest = run.manifest()
    manifest["name"] = PAYLOADS[0]  # a run's name lands in the report's title
    (run_path / files.MANIFEST).write_text(json.dumps(manifest))
    for name in (files.GENERATIONS, files.JUDGMENTS):
        rows = read_jsonl(run_path / name)
        write_jsonl(run_path / name, [r | {key: " ".join(PAYLOADS) for key in ("text", "answer", "instruction",
                                                                                "reference") if key in r}
                                      for r in rows])
    decide_stage(str(run_path), load_config(run_path / files.CONFIG, [f"runs_dir={runs}"]))
    assert PAYLOADS[1] in (run_path / files.REPORT).read_text()  # the markdown report keeps the data as it is
    html = write_html(run).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    live = r"<script|<img src=x|<[^>]*\son\w+=|<a[^>]*href=.?javascript:"  # a tag that runs, not its escaped text
    assert not re.search(live, html, re.IGNORECASE), re.search(f".{{60}}({live})", html, re.IGNORECASE).group(0)
    assert html.count("<img") == html.count('<img alt=') and "data:image/png;base64," in html  # the plots stay
