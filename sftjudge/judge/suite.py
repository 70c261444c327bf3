"""The frozen regression suite: general prompts judged in every run, to measure the alignment tax.

Fine-tuning a small model on narrow instruction data tends to cost it general ability (answering a simple
question turns into emitting the training format). The test split cannot see that: it only holds the user's own
task. So every run also answers a fixed set of general prompts, each with a category and the criteria of a good
answer; the base model answers the same prompts once (cached across runs), and the judge scores both. The tax of
a category is how many score points the fine-tuned model lost against the base model there.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjudge.curate.rows import Example
from sftjudge.curate.steps import load_rows
from sftjudge.errors import DataError
from sftjudge.judge.cache import CachedJudge
from sftjudge.judge.spec import JudgeSpec
from sftjudge.run import files
from sftjudge.run.io import read_jsonl, write_jsonl

SUITES_DIR = Path(__file__).resolve().parent / "suites"
REQUIRED_META = ("category", "criteria")


def suite_path(suite: str) -> Path:
    """A shipped suite name ('general') or a file path, resolved to the file.

    >>> suite_path("general").name
    'general.jsonl'
    """
    shipped = SUITES_DIR / f"{suite}.jsonl"
    if "/" not in suite and "\\" not in suite and shipped.is_file():
        return shipped
    path = Path(suite)
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))
        raise DataError(f"regression.suite: {suite!r} is neither a shipped suite ({', '.join(known)}) nor a file")
    return path


def load_suite(suite: str) -> list[Example]:
    """Every suite row as an Example whose meta holds a non-empty `category` and `criteria`.

    The suite is frozen, so a bad row is an error, not a quarantined row: raises DataError naming the file, the
    line and the field.
    """
    path = suite_path(suite)
    rows = load_rows(path, strict=True)[0].kept
    for row in rows:
        for name in REQUIRED_META:
            value = row.meta.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{row.source}: field {name!r} missing or empty; every regression-suite row needs "
                                f"{' and '.join(REQUIRED_META)}")
    if not rows:
        raise DataError(f"{path}: the regression suite has no rows")
    return rows


def suite_sha256(suite: str) -> str:
    return hashlib.sha256(suite_path(suite).read_bytes()).hexdigest()


def judge_items(generations: list[dict[str, Any]], rows: list[Example]) -> list[dict[str, str]]:
    """Judge inputs for suite answers: the request, the item's criteria, its example answer and the answer."""
    by_id = {row.id: row for row in rows}
    return [{"id": g["id"], "instruction": g["instruction"], "criteria": str(by_id[g["id"]].meta["criteria"]),
             "reference": g["reference"], "answer": g["text"]} for g in generations]


@dataclass(frozen=True, kw_only=True)
class CategoryScore:
    items: int
    run: float | None  # mean judge score of the fine-tuned model
    base: float | None  # mean judge score of the base model on the same items
    item_taxes: tuple[float, ...] = ()  # base minus run, per paired item: what an interval is computed over
    item_runs: tuple[float, ...] = ()  # the run's score per paired item

    @property
    def tax(self) -> float | None:
        """Score points lost against the base model (negative: the fine-tune got better here)."""
        return None if self.run is None or self.base is None else self.base - self.run


def category_table(categories: dict[str, str], run_scores: dict[str, float | None],
                   base_scores: dict[str, float | None]) -> dict[str, CategoryScore]:
    """Mean run and base scores per category, over items both have a score for (paired, so the tax is fair).

    >>> table = category_table({"a": "math", "b": "math", "c": "safety"}, {"a": 4.0, "b": 6.0, "c": 9.0},
    ...                        {"a": 7.0, "b": 7.0, "c": None})
    >>> table["math"].tax, table["math"].item_taxes, table["safety"].items, table["safety"].tax
    (2.0, (3.0, 1.0), 0, None)
    """
    table: dict[str, CategoryScore] = {}
    for category in sorted(set(categories.values())):
        ids = [i for i, c in categories.items() if c == category]
        paired = [i for i in ids if run_scores.get(i) is not None and base_scores.get(i) is not None]
        table[category] = CategoryScore(
            items=len(paired),
            run=statistics.fmean(run_scores[i] for i in paired) if paired else None,
            base=statistics.fmean(base_scores[i] for i in paired) if paired else None,
            item_taxes=tuple(base_scores[i] - run_scores[i] for i in paired),
            item_runs=tuple(run_scores[i] for i in paired))
    return table


def summary(table: dict[str, CategoryScore], suite: str, judge: str) -> dict[str, Any]:
    """The JSON kept in metrics.json under `regression` (rounded for reading; per-item values for intervals)."""
    def r(value):
        return None if value is None else round(value, 4)

    scored = [c for c in table.values() if c.run is not None]
    weight = sum(c.items for c in scored)
    return {
        "suite": suite, "suite_sha256": suite_sha256(suite), "judge": judge,
        "categories": {name: {"items": c.items, "run": r(c.run), "base": r(c.base), "tax": r(c.tax),
                              "item_taxes": [r(x) for x in c.item_taxes]}
                       for name, c in table.items()},
        "run_mean": r(sum(c.run * c.items for c in scored) / weight) if weight else None,
        "base_mean": r(sum(c.base * c.items for c in scored) / weight) if weight else None,
        "run_scores": [r(x) for c in scored for x in c.item_runs],
    }


def judge_suite(run_dir: Path, judging: CachedJudge, spec: JudgeSpec, suite: str) -> dict[str, Any] | None:
    """Judge the run's and the base model's suite answers; write regression_judgments.jsonl; return the summary.

    `judging` is the stage's judge with the run's judgment cache, so a retried stage re-judges nothing. None when
    the generate stage produced no suite answers (suite disabled for that run).
    """
    mine, theirs = run_dir / files.REGRESSION_GENERATIONS, run_dir / files.REGRESSION_BASELINE
    if not mine.is_file() or not theirs.is_file():
        return None
    rows = load_suite(suite)
    categories = {row.id: str(row.meta["category"]) for row in rows}
    out, scores = [], {}
    for model, path in (("run", mine), ("base", theirs)):
        generations = read_jsonl(path)
        judged = judging.judge(spec, judge_items(generations, rows))
        scores[model] = {j["id"]: j.get("score") for j in judged}
        out += [{"id": g["id"], "model": model, "category": categories[g["id"]], "score": j.get("score"),
                 "unparseable": j.get("unparseable"), "instruction": g["instruction"], "answer": g["text"]}
                for g, j in zip(generations, judged)]
    write_jsonl(run_dir / files.REGRESSION_JUDGMENTS, out)
    return summary(category_table(categories, scores["run"], scores["base"]), suite, judging.loaded.identity(spec))
