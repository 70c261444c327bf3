"""The curation pipeline: every step in order, with books that balance and a report of what happened.

load → unique ids → PII → exact dedup → near dedup → length → quality → split → contamination.
Each step is a pure function in its own module returning kept rows and dropped rows with reasons; this module
only chains them, keeps the books (rows in = kept + dropped, checked after every step) and gathers the report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.config import DataConfig
from sftjudge.curate.rows import Example
from sftjudge.curate.split import Splits, split_fingerprint, split_rows
from sftjudge.curate.steps import (
    DataError,
    Dropped,
    StepResult,
    drop_duplicate_ids,
    drop_exact_duplicates,
    drop_special_tokens,
    load_rows,
    strip_trailing_special_tokens,
)

# A quality scorer takes rows and returns one 1-10 score per row (the judge, in practice).
QualityScorer = Callable[[list[Example]], list[float | None]]


@dataclass
class CurationResult:
    """What curation produced: splits, every dropped row with its reason, per-step books and the report."""

    splits: Splits
    dropped: list[Dropped]
    report: dict[str, Any] = field(default_factory=dict)


class Books:
    """Per-step accounting: every step must account for every row it was given."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.dropped: list[Dropped] = []

    def add(self, step: str, rows_in: int, result: StepResult, started: float, **extra: Any) -> list[Example]:
        if rows_in != len(result.kept) + len(result.dropped):
            raise AssertionError(f"step {step} lost rows: in={rows_in} kept={len(result.kept)} "
                                 f"dropped={len(result.dropped)}")
        reasons = Counter(d.reason for d in result.dropped)
        self.steps.append({"step": step, "in": rows_in, "kept": len(result.kept), "dropped": len(result.dropped),
                           "reasons": dict(reasons.most_common()), "seconds": round(time.time() - started, 3),
                           **extra})
        self.dropped.extend(result.dropped)
        return result.kept


def source_sha256(path: str) -> str:
    """Content hash of the input: the file's bytes, or every file of a saved dataset directory."""
    from sftjudge.run.io import file_sha256

    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        digest = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            digest.update(f.relative_to(p).as_posix().encode() + file_sha256(f).encode())
        return digest.hexdigest()
    return hashlib.sha256(f"hub:{path}".encode()).hexdigest()  # a hub id: its content is hashed by the caller


def build_dataset(data: DataConfig, *, tokenizer=None, max_seq_len: int | None = None,
                  quality_scorer: QualityScorer | None = None,
                  regression_rows: list[Example] | None = None, input_sha256: str | None = None) -> CurationResult:
    """Run the whole curation pipeline on `data.path` under the settings in `data`.

    `tokenizer` (the student's) enables the token-length filter; `quality_scorer` is required when
    data.quality.enabled; `input_sha256`: the input's hash as the caller took it (its cache key), else taken here.
    Raises DataError for unusable input, an input that changed while it was read, too few rows, or contamination
    with action=fail.
    """
    books = Books()
    started = time.time()
    input_sha256 = input_sha256 or source_sha256(data.path)
    loaded, blank = load_rows(data.path, fmt=data.format, strict=data.strict, field_map=data.fields,
                              split=data.split)
    if source_sha256(data.path) != input_sha256:
        # The recorded hash must describe the rows the run trains on; a file written to meanwhile matches neither.
        raise DataError(f"{data.path} changed while it was being read (its SHA-256 before and after differ): curate "
                        f"again once nothing is writing to it", dropped=loaded.dropped)
    rows_in = len(loaded.kept) + len(loaded.dropped)
    if rows_in == 0:
        raise DataError(f"{data.path}: no usable rows: the file is empty or holds only blank lines")
    rows = books.add("load", rows_in, loaded, started, blank_lines_skipped=blank)
    rows, pii_counts = _pii_step(books, rows, data)
    rows = _timed(books, "unique_ids", rows, drop_duplicate_ids)
    rows = _timed(books, "exact_dedup", rows, drop_exact_duplicates)
    rows, clusters = _near_dedup_step(books, rows, data)
    if tokenizer is not None and data.special_tokens != "keep":
        rows = _special_tokens_step(books, rows, data, list(tokenizer.all_special_tokens))
    rows, lengths = _length_step(books, rows, data, tokenizer, max_seq_len)
    rows = _quality_step(books, rows, data, quality_scorer)
    if len(rows) < 3:
        raise DataError(f"{data.path}: only {len(rows)} usable rows after curation; need at least 3 to split"
                        f"{_main_loss(books)} (see data/quarantine.jsonl for all {len(books.dropped)} dropped rows "
                        f"and why)", dropped=books.dropped)
    if data.stratify_by and not any(data.stratify_by in r.meta for r in rows):
        seen = sorted({key for r in rows for key in r.meta})[:20]
        raise DataError(f"data.stratify_by={data.stratify_by!r} names no field of {data.path} (extra fields seen: "
                        f"{', '.join(seen) or 'none'}); name a top-level field of the rows, or unset it",
                        dropped=books.dropped)
    strata = {r.id: str(r.meta.get(data.stratify_by, "(missing)")) for r in rows} if data.stratify_by else None
    splits = split_rows(rows, val_ratio=data.val_ratio, test_ratio=data.test_ratio, seed=data.seed,
                        groups=clusters, strata=strata)
    splits, contamination = _contamination_step(books, splits, data, regression_rows or [])
    kept = sum(splits.sizes().values())
    if kept + len(books.dropped) != rows_in:
        raise AssertionError(f"curation lost rows: in={rows_in} kept={kept} dropped={len(books.dropped)}")
    report = {
        "input": data.path, "input_sha256": input_sha256, "rows_in": rows_in, "rows_kept": kept,
        "rows_dropped": len(books.dropped), "blank_lines_skipped": blank, "steps": books.steps,
        "splits": splits.sizes(), "pii_counts": pii_counts, "contamination": contamination,
        "cluster_sizes": _cluster_size_histogram(clusters), "token_lengths": lengths,
        "test_fingerprint": split_fingerprint(splits.test), "seconds": round(time.time() - started, 2),
    }
    return CurationResult(splits, books.dropped, report)


def _timed(books: Books, name: str, rows: list[Example], step: Callable[[list[Example]], StepResult]):
    started = time.time()
    return books.add(name, len(rows), step(rows), started)


def _special_tokens_step(books: Books, rows: list[Example], data: DataConfig, tokens: list[str]) -> list[Example]:
    started = time.time()
    stripped = 0
    if data.special_tokens == "strip_trailing":
        rows, stripped = strip_trailing_special_tokens(rows, tokens)
    return books.add("special_tokens", len(rows), drop_special_tokens(rows, tokens), started,
                     mode=data.special_tokens, trailing_stripped=stripped)


def _main_loss(books: Books) -> str:
    """'; most went at step X: N rows, "reason" (e.g. file:line: detail)' for the step that dropped the most."""
    worst = max(books.steps, key=lambda s: s["dropped"], default=None)
    if not worst or not worst["dropped"]:
        return ""
    reason = next(iter(worst["reasons"]))
    example = next(d for d in books.dropped if d.step == worst["step"] and d.reason == reason)
    return (f"; most went at step {worst['step']}: {worst['dropped']} rows, {reason!r} (e.g. {example.source}: "
            f"{example.detail})")


def _pii_step(books: Books, rows: list[Example], data: DataConfig) -> tuple[list[Example], dict[str, int]]:
    if data.pii.action == "off":
        return rows, {}
    from sftjudge.curate.pii import scrub_pii

    started = time.time()
    result, counts = scrub_pii(rows, mode=data.pii.action)
    return books.add("pii", len(rows), result, started, action=data.pii.action, counts=dict(counts)), dict(counts)


def _near_dedup_step(books: Books, rows: list[Example], data: DataConfig):
    from sftjudge.curate.dedup import drop_near_duplicates

    cfg = data.near_dedup
    started = time.time()
    result, clusters = drop_near_duplicates(rows, threshold=cfg.threshold, num_perm=cfg.num_perm,
                                            shingle_size=cfg.shingle_size)
    if not cfg.enabled:
        # Clusters still group the split (near-duplicates never straddle it); nothing is dropped.
        result = StepResult(list(rows))
    return books.add("near_dedup", len(rows), result, started, enabled=cfg.enabled), clusters


def _length_step(books: Books, rows: list[Example], data: DataConfig, tokenizer, max_seq_len: int | None):
    if tokenizer is None:
        return rows, {}
    from sftjudge.curate.lengths import (
        LengthBounds,
        drop_by_length,
        histogram,
        token_lengths,
    )

    started = time.time()
    bounds = LengthBounds.from_config(data.length, max_seq_len)
    huge, sized = _too_long_for_any_tokenization(rows, tokenizer, bounds.max_total)
    lengths = token_lengths(tokenizer, sized)
    result = drop_by_length(sized, lengths, bounds)
    result.dropped += [Dropped("length", "longer than max_seq_len", r.source, r,
                               detail=f"{chars} characters: over {bounds.max_total} tokens with any tokenization")
                       for r, chars in huge]
    kept_ids = {r.id for r in result.kept}
    totals = [sum(lengths[i]) for i in kept_ids]
    summary = {"total_tokens": histogram(totals), "max_total": max(totals, default=0),
               "mean_total": round(sum(totals) / max(len(totals), 1), 1)}
    return books.add("length", len(rows), result, started), summary


def _too_long_for_any_tokenization(rows: list[Example], tokenizer, max_tokens: int | None):
    """Split off rows with more characters than `max_tokens` of the vocabulary's longest entries can cover.

    Tokenizing a multi-megabyte row takes tens of seconds, and such a row is over the limit whatever its exact
    token count, so it is dropped without being tokenized. Returns ([(row, characters)], the other rows).
    """
    longest = max((len(token) for token in tokenizer.get_vocab()), default=0) if max_tokens else 0
    if not longest:
        return [], rows
    huge, rest = [], []
    for row in rows:
        chars = sum(len(m.content) for m in row.messages)
        if chars > longest * max_tokens:
            huge.append((row, chars))
        else:
            rest.append(row)
    return huge, rest


def _quality_step(books: Books, rows: list[Example], data: DataConfig, scorer: QualityScorer | None):
    if not data.quality.enabled:
        return rows
    if scorer is None:
        raise ValueError("data.quality.enabled needs a quality scorer (the judge); none was given")
    started = time.time()
    result = StepResult([])
    for row, score in zip(rows, scorer(rows)):
        if score is not None and score >= data.quality.threshold:
            result.kept.append(row)
        else:
            shown = "no score" if score is None else f"{score:.2f}"
            result.dropped.append(Dropped("quality", "low quality", row.source, row,
                                          detail=f"judge score {shown} < {data.quality.threshold}"))
    return books.add("quality", len(rows), result, started, threshold=data.quality.threshold)


def _contamination_step(books: Books, splits: Splits, data: DataConfig, regression_rows: list[Example]):
    from sftjudge.curate.contamination import contaminated_rows, drop_contaminated

    cfg = data.contamination
    started = time.time()
    reference = splits.train + regression_rows
    flagged = contaminated_rows(splits.val + splits.test, reference, n=cfg.n, threshold=cfg.threshold)
    if flagged and cfg.action == "fail":
        listing = "; ".join(f"{f['id']} ({f['source']}, overlap {f['overlap']:.2f})" for f in flagged[:10])
        raise DataError(f"{len(flagged)} val/test rows overlap the training data (n={cfg.n}, threshold "
                        f"{cfg.threshold}): {listing}. Set data.contamination.action=drop to remove them.",
                        dropped=books.dropped)
    result = drop_contaminated(splits.val + splits.test, flagged if cfg.action == "drop" else [], cfg.n)
    kept = {row.id for row in result.kept}
    out = Splits(splits.train, [r for r in splits.val if r.id in kept], [r for r in splits.test if r.id in kept])
    n_eval = len(splits.val) + len(splits.test)
    books.add("contamination", n_eval, result, started, action=cfg.action, flagged=len(flagged))
    return out, flagged


def _cluster_size_histogram(clusters: dict[str, int]) -> dict[str, int]:
    """How many clusters have 1, 2, 3... members (before near-dedup dropped any)."""
    sizes = Counter(Counter(clusters.values()).values())
    return {str(size): count for size, count in sorted(sizes.items())}


def curation_cache_key(data: DataConfig, input_sha256: str, tokenizer_id: str | None,
                       max_seq_len: int | None, quality_judge_id: str | None) -> str:
    """Same input content + same data settings + same tokenizer → same curation result.

    The contamination reference suite counts by its content, not its path: an edited suite file is a new key.
    """
    from sftjudge.run.io import file_sha256

    settings = data.model_dump(mode="json", exclude={"cache"})
    suite = data.contamination.regression_suite
    settings["contamination"]["regression_suite"] = file_sha256(Path(suite)) if suite else None
    blob = json.dumps([settings, input_sha256, tokenizer_id, max_seq_len, quality_judge_id], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
