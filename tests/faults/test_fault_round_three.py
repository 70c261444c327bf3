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


@pytest.mark.model
def test_saved_weights_follow_the_umask_not_safetensors_0600(tmp_path, tiny_model):
    import os
    import stat

    from sftjudge.models.chat import template_fingerprint
    from sftjudge.run.io import publish_directory
    from sftjudge.train.checkpoints import save_checkpoint

    model, tok = tiny_model
    old = os.umask(0o022)
    try:
        saved = save_checkpoint(model, tok, tmp_path / "epoch-1", {"epoch": 1, "method": "full",
                                                                   "template_fingerprint": template_fingerprint(tok)})
        staged = tmp_path / "staging"  # as the trainer leaves an epoch before it is published
        model.save_pretrained(staged)
        publish_directory(staged, tmp_path / "epoch-2")
    finally:
        os.umask(old)
    for folder in (saved, tmp_path / "epoch-2"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
        assert modes and all(mode == 0o644 for mode in modes.values()), modes  # model.safetensors was 0600


def test_an_approval_timeout_too_large_for_a_pause_is_refused_up_front():
    from sftjudge.config_yaml import load_config
    from sftjudge.errors import ConfigError

    # before: accepted, then the approval pause died with OverflowError and `resume` repeated it
    with pytest.raises(ConfigError, match="approval_timeout_s"):
        load_config(None, ["decide.approval_timeout_s=1000000000000000000"])
    assert load_config(None, ["decide.approval_timeout_s=86400"]).decide.approval_timeout_s == 86400


@pytest.mark.model
def test_export_overwrite_replaces_only_an_earlier_export_and_only_once_the_new_one_is_whole(base_run, tmp_path,
                                                                                             sftjudge_home,
                                                                                             monkeypatch):
    from sftjudge.errors import ModelError
    from sftjudge.export import card
    from sftjudge.export.merge import export_run

    precious = tmp_path / "someones-files"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for target in (precious, base_run.parent):  # a folder of files, and the runs directory itself
        with pytest.raises(ModelError, match="not an sftjudge export"):
            export_run(base_run, target, sftjudge_home, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work" and (base_run / files.MANIFEST).is_file()

    out = export_run(base_run, tmp_path / "export", sftjudge_home)
    first = sorted(p.name for p in out.iterdir())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill while the new export is being written

    monkeypatch.setattr(card, "model_card", killed)
    with pytest.raises(KeyboardInterrupt):
        export_run(base_run, out, sftjudge_home, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == first  # before: the old export was deleted first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_registry_rebuild_with_an_unreadable_run_keeps_the_others_and_every_backup(base_run, tmp_path, capsys):
    from sftjudge import cli
    from sftjudge.config_yaml import load_config
    from sftjudge.decide.stage import decide_stage
    from sftjudge.run.registry import Registry

    from .faultkit import set_scores

    runs = tmp_path / "runs"
    a, b, c = (clone_run(base_run, runs, name, reset=("decide",)) for name in ("a", "b", "c"))
    for run, score in ((a, 4.0), (b, 7.0), (c, 8.0)):
        set_scores(run, [score, score + 0.2, score - 0.2, score + 0.1, score - 0.1, score])
        decide_stage(str(run), load_config(run / files.CONFIG, [f"runs_dir={runs}"]))
    (c / files.MANIFEST).write_text('{"run_id": "c", "stag')  # truncated by a full disk
    (runs / "registry.sqlite").write_bytes(b"garbage")
    assert cli.main(["registry", "rebuild", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr()
    assert "2 runs, champion b" in out.out and "left out (cannot be read): c:" in out.err  # before: exit 1, emptied
    assert (runs / "registry.sqlite.damaged").read_bytes() == b"garbage"
    assert cli.main(["registry", "rebuild", "--runs-dir", str(runs)]) == 0  # again: the first backup stays
    assert (runs / "registry.sqlite.damaged").read_bytes() == b"garbage"
    assert (runs / "registry.sqlite.damaged-2").is_file()
    assert [r["run_id"] for r in Registry.in_runs_dir(runs).runs()] == ["a", "b"]


def test_a_whole_run_writes_its_weights_with_the_umask_permissions(base_run):
    import os
    import stat

    from sftjudge.run.io import current_umask

    weights = list(base_run.rglob("*.safetensors"))
    assert weights  # the sft stage's epochs (written by the trainer, then published)
    expected = 0o666 & ~current_umask()
    assert {str(p.relative_to(base_run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in weights
            if stat.S_IMODE(p.stat().st_mode) != expected} == {}
    assert os.access(weights[0], os.R_OK)


def test_weak_spots_each_end_in_one_clear_line(base_run, tmp_path, capsys):
    import os
    import sys

    from sftjudge import cli
    from sftjudge.config_yaml import load_config
    from sftjudge.errors import ConfigError

    from .faultkit import REPO

    for size in ("-5", "nan", "inf"):  # before: planned for -5 GiB, or an OverflowError
        with pytest.raises(SystemExit, match="a positive number"):
            cli.main(["plan", str(REPO / "configs/tiny.yaml"), "--gpu-gib", size])
    with pytest.raises(ConfigError, match="name"):  # before: accepted, then MLflow refused the run's name
        load_config(None, ["name=team/exp-1"])
    runs = tmp_path / "runs"
    run_path = clone_run(base_run, runs, "torn")
    (run_path / files.MANIFEST).write_text('{"run_id": "torn", "stag')
    assert cli.main(["show", "torn", "--runs-dir", str(runs)]) == 2  # before: a bare JSONDecodeError, no file named
    assert f"{run_path / files.MANIFEST} is damaged" in capsys.readouterr().err
    (run_path / files.MANIFEST).write_text(json.dumps({"run_id": "torn", "stages": {}}))
    read, write = os.pipe()
    os.close(read)  # `sftjudge runs | head -1`: the reader is gone before the table is written
    saved = sys.stdout
    sys.stdout = os.fdopen(write, "w", buffering=1)  # each line written at once, as to a terminal or a pipe's end
    try:
        code = cli.main(["runs", "--runs-dir", str(runs)])
    finally:
        sys.stdout = saved
    assert code == 0  # before: "sftjudge: BrokenPipeError ... an unexpected error", exit 1


def test_registry_and_run_lookups_say_what_is_wrong(base_run, tmp_path, capsys):
    from sftjudge import cli

    runs = tmp_path / "runs"
    clone_run(base_run, runs, "r1")
    (runs / "registry.sqlite").write_bytes(b"this is not a database, just bytes" * 100)
    assert cli.main(["runs", "--runs-dir", str(runs)]) == 2  # before: exit 1, "unexpected error", no hint
    assert "is not a registry database" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no runs directory"):  # before: created the folder and an empty registry
        cli.main(["runs", "--runs-dir", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()
    with pytest.raises(SystemExit, match="is not a run id"):  # before: looked outside the runs directory
        cli.main(["show", "../runs/r1", "--runs-dir", str(runs)])
