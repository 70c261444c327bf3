"""The curate stage: curate and split the data into the run's `data/`, with a cache keyed by content.

Every dropped row goes to data/quarantine.jsonl with its reason; results are cached under
$SFTJUDGE_HOME/curation/ by (input content, data settings, tokenizer, quality judge), so an unchanged dataset is
not processed again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.curate.pipeline import build_dataset, curation_cache_key, source_sha256
from sftjudge.curate.rows import Example
from sftjudge.errors import DataError
from sftjudge.models.embedded import resolve_model
from sftjudge.run import files
from sftjudge.run.io import atomic_directory, atomic_write_json, write_jsonl
from sftjudge.run.stage import StageContext, run_stage


def curate_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Curate and split `data.path` into the run's data/ (train, val, test, quarantine, report)."""
    return run_stage("curate", run_path, config, _curate)


def _curate(ctx: StageContext) -> None:
    run, data = ctx.run, ctx.config.data
    quality = _QualityJudge(ctx) if data.quality.enabled else None
    tokenizer = _student_tokenizer(ctx)
    input_sha256 = source_sha256(data.path)
    key = curation_cache_key(data, input_sha256, tokenizer_identity(tokenizer), ctx.config.sft.max_seq_len,
                             quality.identity if quality else None)
    cache_dir = ctx.home / "curation" / key
    hit = data.cache and (cache_dir / "report.json").is_file()
    if hit:
        shutil.copytree(cache_dir, run / files.DATA, dirs_exist_ok=True)
        report = json.loads((run / files.DATA_REPORT).read_text())
    else:
        report = _curate_into(ctx, quality, tokenizer, input_sha256)
    report["cache"] = {"key": key, "hit": hit}
    report["warnings"] = sample_size_warnings(report["splits"]["test"], ctx.config.decide.min_paired_items)
    atomic_write_json(run / files.DATA_REPORT, report)
    if data.cache and not hit:  # after report.json is written: a cache entry without it never hits
        with atomic_directory(cache_dir) as tmp:
            shutil.copytree(run / files.DATA, tmp, dirs_exist_ok=True)
    ctx.record.outputs = {name: path for name, path in files.SPLITS.items()} | {"quarantine": files.QUARANTINE,
                                                                                "report": files.DATA_REPORT}
    ctx.record.counts = {"rows_in": report["rows_in"], "dropped": report["rows_dropped"], **report["splits"],
                         "input_sha256": report["input_sha256"], "test_fingerprint": report["test_fingerprint"],
                         "cache_hit": report["cache"]["hit"]}


def _student_tokenizer(ctx: StageContext):
    from transformers import AutoTokenizer

    base = resolve_model(ctx.config.sft.base_model, ctx.home)
    return AutoTokenizer.from_pretrained(base, trust_remote_code=ctx.config.sft.trust_remote_code)


def tokenizer_identity(tokenizer) -> str:
    """What of the student's tokenizer decides curation (token lengths, rendered chats, special tokens): its
    vocabulary and rules and its chat template, by content. The model's name would stay the same when its
    template file is edited in place, and the cache would serve rows curated under the old one."""
    from sftjudge.models.chat import template_fingerprint

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((template_fingerprint(tokenizer) + vocabulary).encode()).hexdigest()[:24]


def _curate_into(ctx: StageContext, quality: _QualityJudge | None, tokenizer, input_sha256: str) -> dict:
    from sftjudge.curate.steps import load_rows

    config, run = ctx.config, ctx.run
    suite = None
    if config.data.contamination.regression_suite:
        suite = load_rows(config.data.contamination.regression_suite)[0].kept
    try:
        result = build_dataset(config.data, tokenizer=tokenizer, max_seq_len=config.sft.max_seq_len,
                               quality_scorer=quality.score if quality else None, regression_rows=suite,
                               input_sha256=input_sha256)
    except DataError as exc:  # the rows set aside so far are still quarantined, each with its reason
        write_jsonl(run / files.QUARANTINE, [d.to_json() for d in exc.dropped])
        raise
    for name, rows in (("train", result.splits.train), ("val", result.splits.val), ("test", result.splits.test)):
        write_jsonl(run / files.SPLITS[name], [r.to_json() for r in rows])
    write_jsonl(run / files.QUARANTINE, [d.to_json() for d in result.dropped])
    return result.report


class _QualityJudge:
    """The judge scoring training rows with the quality judge definition (a `QualityScorer`); its identity is
    known up front for the cache key, its weights load only when rows are actually scored."""

    def __init__(self, ctx: StageContext):
        from sftjudge.judge.model import LoadedJudge
        from sftjudge.judge.spec import load_judge

        judge = ctx.config.judge
        self.batch_size = judge.batch_size
        self.loaded = LoadedJudge(ctx.config, ctx.home)
        self.spec = load_judge(Path(judge.judges_dir), ctx.config.data.quality.judge)
        self.identity = self.loaded.identity(self.spec)

    def score(self, rows: list[Example]) -> list[float | None]:
        items = [{"id": r.id, "instruction": r.instruction, "answer": r.completion} for r in rows]
        return [j.score for j in self.loaded.scorer(self.spec).score(items, batch_size=self.batch_size)]


def sample_size_warnings(test_rows: int, min_paired_items: int) -> list[str]:
    """What the test split's size means for the decision, said before any training time is spent.

    >>> sample_size_warnings(9, 20)[0][:60]
    'the test split holds 9 rows: too few to promote or roll back'
    >>> sample_size_warnings(40, 20)
    []
    """
    if test_rows >= min_paired_items:
        return []
    return [f"the test split holds {test_rows} rows: too few to promote or roll back (decide.min_paired_items is "
            f"{min_paired_items}), so this run will be held; raise data.test_ratio or add data"]
