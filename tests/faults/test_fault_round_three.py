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


class _ScriptedServer:
    """Stands for a ServedClient whose chat replies carry the given top log-probabilities at the first position."""

    base_url = "http://127.0.0.1:9/v1"

    def __init__(self, top: list[tuple[str, float]]):
        self.top = top

    def chat(self, messages, **options):
        top = [{"token": token, "logprob": logprob} for token, logprob in self.top]
        return {"choices": [{"logprobs": {"content": [{"token": top[0]["token"], "top_logprobs": top}]}}]}

    def map(self, work, items):
        return [work(item) for item in items]


@pytest.mark.parametrize("top", [[("8", float("nan")), ("9", -1.0)], [("8", float("inf"))], [("9", 50.0)],
                                 [("8", -0.1), ("9", -0.1)]], ids=["nan", "inf", "positive", "mass-above-1"])
def test_impossible_log_probabilities_from_a_served_judge_are_refused_not_scored(tiny_model, top):
    from sftjudge.errors import JudgeError
    from sftjudge.judge.served import ServedLogprobJudge
    from sftjudge.judge.spec import load_judge

    from .faultkit import REPO

    _, tok = tiny_model
    scorer = ServedLogprobJudge(_ScriptedServer(top), tok, load_judge(REPO / "judges", "reference-score"))
    item = {"id": "a", "instruction": "Which port?", "reference": "8443", "answer": "8443"}
    with pytest.raises(JudgeError, match="server is broken"):
        scorer.score([item])  # before: NaN became the score, +50 a label mass of 5e21 and the score 9.0


def test_a_non_finite_judgment_is_never_cached(tmp_path):
    from sftjudge.errors import JudgeError
    from sftjudge.judge.cache import JudgmentCache, judge_cached
    from sftjudge.judge.spec import Judgment

    class Broken:
        def score(self, items, batch_size=4):
            return [Judgment(id=i["id"], score=float("nan"), label_mass=0.9) for i in items]

    cache = JudgmentCache(tmp_path / "judgments.cache.jsonl").load()
    with pytest.raises(JudgeError, match="item a .*score nan"):
        judge_cached(Broken(), cache, [{"id": "a", "answer": "x"}], "judge@x", batch_size=4)
    assert not (tmp_path / "judgments.cache.jsonl").exists() or not (tmp_path / "judgments.cache.jsonl").read_text()
