"""Resumable generation: every finished answer is appended to a JSONL file, keyed by model, prompt and params.

A retried stage reads the file back, keeps what matches the current key, and generates only the rest. The key
is sha256(model fingerprint, prompt, params), where the model fingerprint covers the weights' content (base
model and checkpoint), the chat template and the engine that ran them, so a cached answer is never handed to a
model or setting that would not have produced it. The same files let a later run reuse the champion's answers
and a shared per-dataset baseline of the base model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjudge.curate.rows import Example
from sftjudge.generate.backends import (
    Engine,
    Generation,
    GenerationParams,
    Generator,
    answer_record,
    prompts_for,
)
from sftjudge.models.fingerprint import model_fingerprint, sha256_json
from sftjudge.run.io import exclusive, write_jsonl
from sftjudge.run.jsonl_cache import KeyedJsonl

GENERATION_FIELDS = tuple(Generation.__dataclass_fields__)


def prompt_hash(prompt: str) -> str:
    """SHA-256 of the rendered prompt text (template included): equal hashes mean the model saw the same input."""
    return hashlib.sha256(prompt.encode()).hexdigest()


def item_key(model_fingerprint: str, prompt: str, params: GenerationParams) -> str:
    """The cache key of one answer: which model, which exact prompt, which decoding settings."""
    return sha256_json([model_fingerprint, prompt_hash(prompt), params.to_json()])


# Generation records are one kind of keyed JSONL record; the crash-tolerant file logic is shared with judgments.
GenerationCache = KeyedJsonl


@dataclass
class CachedGenerations:
    """Records in row order plus what happened: answers generated now, reused from the file, lines dropped."""

    records: list[dict[str, Any]]
    generated: int
    reused: int
    dropped_lines: int
    model_fingerprint: str

    def counts(self) -> dict[str, int]:
        return {"generated": self.generated, "reused": self.reused, "cache_dropped_lines": self.dropped_lines}


@dataclass(frozen=True, kw_only=True)
class AnsweringModel:
    """A model as the cache sees it: its fingerprint (part of every key), the label its records carry, and the
    generator that answers what is missing (a `LazyGenerator` loads nothing until then)."""

    fingerprint: str
    label: str
    generator: Generator


def generate_cached(rows: list[Example], prompts: list[str], params: GenerationParams, path: Path,
                    model: AnsweringModel, *, chunk_size: int = 8) -> CachedGenerations:
    """Generate every row not already in `path`, appending each chunk as it finishes; rewrite `path` in row order.

    `model.generator` is called only when something is missing: pass a `LazyGenerator` and a fully cached retry
    loads no model. Missing prompts are sorted by length before chunking, so each chunk is one evenly padded
    batch. At the end `path` holds exactly `rows`' records, in order (stale keys from other settings are
    dropped). Raises ValueError when `rows` and `prompts` differ in length.
    """
    from sftjudge.runtime.progress import progress

    if len(rows) != len(prompts):
        raise ValueError(f"{len(rows)} rows but {len(prompts)} prompts; render one prompt per row")
    cache = GenerationCache(path).load()
    keys = [item_key(model.fingerprint, p, params) for p in prompts]
    first_row_of: dict[str, int] = {}  # rows sharing a prompt share one answer: generate it once
    for i, key in enumerate(keys):
        if key not in cache.records:
            first_row_of.setdefault(key, i)
    missing = sorted(first_row_of.values(), key=lambda i: len(prompts[i]))
    with progress(total=len(missing), desc="generate", unit="answer", disable=not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start:start + chunk_size]
            generations = model.generator.generate([prompts[i] for i in chunk], params)
            if len(generations) != len(chunk):
                raise RuntimeError(f"the generator returned {len(generations)} answers for {len(chunk)} prompts")
            cache.append([_record(rows[i], prompts[i], gen.to_json(), keys[i], params, model)
                          for i, gen in zip(chunk, generations)])
            bar.update(len(chunk))
    records = [_record(row, prompt, cache.records[key], key, params, model)
               for row, prompt, key in zip(rows, prompts, keys)]
    write_jsonl(Path(path), records)
    return CachedGenerations(records=records, generated=len(missing), reused=len(rows) - len(missing),
                             dropped_lines=cache.dropped_lines, model_fingerprint=model.fingerprint)


def _record(row: Example, prompt: str, generation: dict[str, Any], key: str, params: GenerationParams,
            model: AnsweringModel) -> dict[str, Any]:
    # Built from the row each time: two rows with the same prompt share one cached answer but keep their own ids.
    fields = {name: generation[name] for name in GENERATION_FIELDS}
    return answer_record(row, prompt, fields, model.label) | {
        "key": key, "model_fingerprint": model.fingerprint, "prompt_hash": prompt_hash(prompt),
        "params": params.to_json()}


def baseline_path(home: Path, base: str, fingerprint: str, test_fingerprint: str,
                  params: GenerationParams) -> Path:
    """`$SFTJUDGE_HOME/baselines/<base name>-<key>.jsonl`; the key covers the model, the test split and params."""
    key = sha256_json([fingerprint, test_fingerprint, params.to_json()])[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base.rstrip("/")).name)[:60] or "base"
    return Path(home) / "baselines" / f"{name}-{key}.jsonl"


@dataclass(frozen=True, kw_only=True)
class UntunedModel:
    """The base model (no fine-tune) as the baseline cache sees it: its path, the tokenizer that renders its
    prompts, its generator (lazy: loaded only for a missing answer) and the id of the engine running it."""

    path: str
    tokenizer: Any
    generator: Generator
    engine: str  # engine_id(backend, precision)

    @classmethod
    def load(cls, path: str, engine: Engine) -> UntunedModel:
        """The tokenizer now, the weights on first use."""
        from transformers import AutoTokenizer

        from sftjudge.generate.backends import LazyGenerator
        from sftjudge.generate.loading import make_generator

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=engine.trust_remote_code)
        return cls(path=path, tokenizer=tokenizer, generator=LazyGenerator(lambda: make_generator(engine, path)[0]),
                   engine=engine.id)


def generate_baseline(base: UntunedModel, rows: list[Example], params: GenerationParams, home: Path, *,
                      chunk_size: int = 8) -> CachedGenerations:
    """Answers of the base model (no fine-tune) to `rows`, generated once per (model, test split, params).

    The file lives under `home/baselines/` and is shared by every run on the same test split, so only the first
    run pays; an interrupted one resumes. The model is loaded only when something is missing; the caller closes
    its generator. Raises TemplateError when the base tokenizer has no chat template.
    """
    from sftjudge.curate.split import split_fingerprint
    from sftjudge.models.chat import template_fingerprint

    prompts = prompts_for(base.tokenizer, rows)
    fingerprint = model_fingerprint(base.path, template=template_fingerprint(base.tokenizer), engine=base.engine)
    path = baseline_path(home, base.path, fingerprint, split_fingerprint(rows), params)
    model = AnsweringModel(fingerprint=fingerprint, label=f"base:{Path(base.path).name}", generator=base.generator)
    with exclusive(path):
        return generate_cached(rows, prompts, params, path, model, chunk_size=chunk_size)
