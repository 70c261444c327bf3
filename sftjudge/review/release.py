"""`sftjudge release RUN`: a champion becomes *released* only when a person passed its acceptance set.

The acceptance set is the run's frozen review sample (item ids and content hash recorded); the bar is
`review.release_pass_rate` of at least `review.min_items` labelled items, all labels given on that exact sample.
The registry records when, the evidence and the bar; a refusal names what is missing.

Nothing on disk is taken on trust: every sample item must show what the run answered (generations.jsonl) and
what its judge scored (judgments.jsonl) - a sample edited after it was built, hashes recomputed, is refused naming
the line and field - and every label is validated again as if it were just given. A bar lowered on the command
line (`release RUN review.release_pass_rate=0.5`) is allowed, said loudly and recorded with the release.
"""

from __future__ import annotations

from typing import Any

from sftjudge.config import ReviewConfig, RunConfig
from sftjudge.errors import DataError
from sftjudge.review.labels import LabelStore, check_label
from sftjudge.review.sample import sample_hash
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_jsonl
from sftjudge.run.registry import Registry


def _untrue_items(run: RunDir, sample: list[dict[str, Any]]) -> list[str]:
    """Each sample line that does not show what the run answered or what its judge scored."""
    path = run / files.REVIEW_SAMPLE
    generations = {g["id"]: g for g in read_jsonl(run / files.GENERATIONS)} if (
        run / files.GENERATIONS).is_file() else {}
    scores = {j["id"]: j.get("score") for j in read_jsonl(run / files.JUDGMENTS)} if (
        run / files.JUDGMENTS).is_file() else {}
    wrong = []
    for line_no, item in enumerate(sample, start=1):
        gen = generations.get(item.get("id"))
        if gen is None:
            wrong.append(f"{path}:{line_no}: item {item.get('id')!r} is not in {files.GENERATIONS}")
            continue
        fields = [field for field, key in (("answer", "text"), ("instruction", "instruction"),
                                           ("reference", "reference")) if item.get(field) != gen.get(key)]
        if item.get("judge_score") != scores.get(item["id"]):
            fields.append("judge_score")
        if fields:
            wrong.append(f"{path}:{line_no}: item {item['id']!r}: field {', '.join(map(repr, fields))} differs from "
                         f"the run's {files.GENERATIONS if fields[0] != 'judge_score' else files.JUDGMENTS}")
    return wrong


def _unchecked_labels(store: LabelStore) -> list[str]:
    """Each label in the file that would be refused if it were given now."""
    bad = []
    for line_no, (item_id, label) in enumerate(store.labels.items(), start=1):
        try:
            check_label(store.items[item_id], label, f"{store.path}:{line_no}")
        except DataError as exc:
            bad.append(str(exc))
    return bad


def lowered_bar(usual: ReviewConfig, given: ReviewConfig) -> dict[str, dict[str, float]]:
    """The bar's settings that `given` (the command line's) sets below the run's own config.

    >>> lowered_bar(ReviewConfig(), ReviewConfig(release_pass_rate=0.5))
    {'release_pass_rate': {'from': 0.9, 'to': 0.5}}
    """
    return {name: {"from": getattr(usual, name), "to": getattr(given, name)}
            for name in ("release_pass_rate", "min_items") if getattr(given, name) < getattr(usual, name)}


def acceptance(run: RunDir, config: RunConfig) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(evidence, bar, refusals): what the labels show, what they must show, and every reason they do not."""
    bar = {"pass_rate": config.review.release_pass_rate, "min_items": config.review.min_items}
    if not (run / files.REVIEW_SAMPLE).is_file():
        return {}, bar, [f"no review sample: run `sftjudge review {run.path}` and grade it first"]
    sample = read_jsonl(run / files.REVIEW_SAMPLE)
    sha = sample_hash(sample)
    untrue = _untrue_items(run, sample)
    if untrue:  # what a person passed is not what the run answers: the labels prove nothing about it
        return {}, bar, [f"the review sample does not show this run's answers ({'; '.join(untrue[:5])}"
                         f"{f'; and {len(untrue) - 5} more' if len(untrue) > 5 else ''}); move review/ away and "
                         f"review again"]
    store = LabelStore(run, sample, sha)  # refuses labels given on another sample
    bad = _unchecked_labels(store)
    if bad:
        return {}, bar, [f"{len(bad)} label(s) in {store.path} would be refused if given now ({bad[0]}); fix or "
                         f"remove them, or label those items again with `sftjudge review`"]
    verdicts = [label["passed"] for label in store.labels.values() if label.get("passed") is not None]
    passes = sum(verdicts)
    evidence = {"sample_sha256": sha, "item_ids": [i["id"] for i in sample], "items": len(sample),
                "labelled": len(verdicts), "passed": passes,
                "pass_rate": round(passes / len(verdicts), 4) if verdicts else None}
    refusals = []
    if len(verdicts) < bar["min_items"]:
        refusals.append(f"{len(verdicts)} of {len(sample)} acceptance items have a pass/fail label; "
                        f"{bar['min_items']} needed (review.min_items)")
    if verdicts and passes / len(verdicts) < bar["pass_rate"]:
        refusals.append(f"the reviewer passed {passes} of {len(verdicts)} ({passes / len(verdicts):.0%}); the bar is "
                        f"{bar['pass_rate']:.0%} (review.release_pass_rate)")
    return evidence, bar, refusals


def release(run: RunDir, config: RunConfig, usual: ReviewConfig | None = None) -> dict[str, Any]:
    """Release the run if it is the champion and its acceptance set passes; DataError listing every reason if not.

    `usual`: the review settings of the run's own config; a bar `config` lowers below them is recorded as such.
    """
    evidence, bar, refusals = acceptance(run, config)
    lowered = lowered_bar(usual, config.review) if usual else {}
    if lowered:
        bar["lowered"] = lowered
    registry = Registry.in_runs_dir(config.runs_dir)
    champion = registry.champion()
    if not champion or champion["run_id"] != run.run_id:
        refusals.insert(0, f"run {run.run_id} is not the champion "
                           f"({champion['run_id'] if champion else 'there is none yet'}); only a champion is released")
    if refusals:
        raise DataError(f"not released: {'; '.join(refusals)}")
    record = registry.release(run.run_id, evidence, bar)
    atomic_write_json(run / files.REVIEW_RELEASE, record)
    return record
