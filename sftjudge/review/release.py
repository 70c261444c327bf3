"""`sftjudge release RUN`: a champion becomes *released* only when a person passed its acceptance set.

The acceptance set is the run's frozen review sample (item ids and content hash recorded); the bar is
`review.release_pass_rate` of at least `review.min_items` labelled items, all labels given on that exact sample.
The registry records when, the evidence and the bar; a refusal names what is missing.
"""

from __future__ import annotations

from typing import Any

from sftjudge.config import RunConfig
from sftjudge.errors import DataError
from sftjudge.review.labels import LabelStore
from sftjudge.review.sample import sample_hash
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_jsonl
from sftjudge.run.registry import Registry


def acceptance(run: RunDir, config: RunConfig) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(evidence, bar, refusals): what the labels show, what they must show, and every reason they do not."""
    bar = {"pass_rate": config.review.release_pass_rate, "min_items": config.review.min_items}
    if not (run / files.REVIEW_SAMPLE).is_file():
        return {}, bar, [f"no review sample: run `sftjudge review {run.path}` and grade it first"]
    sample = read_jsonl(run / files.REVIEW_SAMPLE)
    sha = sample_hash(sample)
    store = LabelStore(run, sample, sha)  # refuses labels given on another sample
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


def release(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Release the run if it is the champion and its acceptance set passes; DataError listing every reason if not."""
    evidence, bar, refusals = acceptance(run, config)
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
