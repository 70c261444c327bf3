"""Seeded train/val/test split that keeps near-duplicate clusters whole and can stratify by a field.

The split depends only on row content, the groups, the strata and the seed - never on file order - so the same
data and config always give the same split, and a near-duplicate can never sit in train while its twin is in test.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass

from sftjudge.curate.rows import Example


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _content_key(rows: list[Example]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.id):
        digest.update(json.dumps([m.content for m in row.messages]).encode())
    return digest.hexdigest()


def split_rows(rows: list[Example], *, val_ratio: float, test_ratio: float, seed: int,
               groups: dict[str, int] | None = None, strata: dict[str, str] | None = None) -> Splits:
    """Assign whole groups (default: each row alone) to test, val and train, per stratum, by seeded shuffle.

    `groups` maps row id → group id (near-duplicate cluster); `strata` maps row id → stratum label. Within each
    stratum, test and val are filled to round(n * ratio) rows (at least one each when the stratum has 3+ rows),
    whole groups at a time, the rest goes to train.
    """
    by_group: dict[object, list[Example]] = defaultdict(list)
    for row in rows:
        by_group[groups.get(row.id, row.id) if groups else row.id].append(row)
    by_stratum: dict[str, list[list[Example]]] = defaultdict(list)
    for members in by_group.values():
        label = strata.get(members[0].id, "") if strata else ""
        by_stratum[label].append(members)
    result = Splits([], [], [])
    for label in sorted(by_stratum):
        stratum_groups = sorted(by_stratum[label], key=_content_key)
        random.Random(f"{seed}:{label}").shuffle(stratum_groups)
        _fill(stratum_groups, result, val_ratio=val_ratio, test_ratio=test_ratio)
    return result


def _fill(groups: list[list[Example]], result: Splits, *, val_ratio: float, test_ratio: float) -> None:
    n = sum(len(g) for g in groups)
    want_test = max(1, round(n * test_ratio)) if n >= 3 else 0
    want_val = max(1, round(n * val_ratio)) if n >= 3 else 0
    got_test = got_val = 0
    for members in groups:
        # Greedy by group: a cluster larger than what a split still needs goes to train rather than overfill.
        if got_test < want_test and got_test + len(members) <= max(want_test, 1):
            result.test.extend(members)
            got_test += len(members)
        elif got_val < want_val and got_val + len(members) <= max(want_val, 1):
            result.val.extend(members)
            got_val += len(members)
        else:
            result.train.extend(members)


def load_split(run_dir, split: str) -> list[Example]:
    """The rows of one split written by the curate stage (`<run>/data/<split>.jsonl`)."""
    from pathlib import Path

    from sftjudge.run.io import read_jsonl

    return [Example.model_validate(row) for row in read_jsonl(Path(run_dir) / f"data/{split}.jsonl")]


def split_fingerprint(rows: list[Example]) -> str:
    """Hash of a split's ids and content: two runs are comparable only when their test fingerprints match."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.id):
        digest.update(json.dumps(row.to_json()["messages"], sort_keys=True).encode())
        digest.update(row.id.encode())
    return digest.hexdigest()
