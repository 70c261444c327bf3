"""Resumable generation: every finished answer is appended to a JSONL file, keyed by model, prompt and params.

A retried stage reads the file back, keeps what matches the current key, and generates only the rest. The key
is sha256(model fingerprint, prompt, params), where the model fingerprint covers the weights' content (base
model and checkpoint), the chat template and the engine that ran them, so a cached answer is never handed to a
model or setting that would not have produced it. The same files let a later run reuse the champion's answers
and a shared per-dataset baseline of the base model.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjudge.jsonl_cache import KeyedJsonl
from sftjudge.generate import Generation, GenerationParams, Generator, answer_record, engine_id, prompts_for
from sftjudge.rows import Example
from sftjudge.rundir import file_sha256, write_jsonl


GENERATION_FIELDS = tuple(Generation.__dataclass_fields__)
# Small files that change what the weights compute (architecture, LoRA scaling); hashed with the weights.
_CONFIG_FILES = ("config.json", "adapter_config.json")


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_hash(prompt: str) -> str:
    """SHA-256 of the rendered prompt text (template included): equal hashes mean the model saw the same input."""
    return hashlib.sha256(prompt.encode()).hexdigest()


def item_key(model_fingerprint: str, prompt: str, params: GenerationParams) -> str:
    """The cache key of one answer: which model, which exact prompt, which decoding settings."""
    return _sha256_json([model_fingerprint, prompt_hash(prompt), params.to_json()])


def weights_digest(directory: Path) -> str:
    """SHA-256 over a model directory's *.safetensors files and config files (names and contents)."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix == ".safetensors" or p.name in _CONFIG_FILES)
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{directory}: no *.safetensors weights to fingerprint")
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest_files(str(directory.resolve()), stamp)


@functools.lru_cache(maxsize=32)
def _digest_files(directory: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by size and mtime too: hashing a base model costs ~1 s per GB and a stage asks more than once.
    return _sha256_json([(name, file_sha256(Path(directory) / name)) for name, _, _ in stamp])


def model_fingerprint(base: str, checkpoint: Path | None = None, *, template: str | None = None,
                      engine: str = "") -> str:
    """A stable id of the model as served: weights content, chat template and engine (see `engine_id`).

    `base` is a model directory (its weights are hashed) or a hub id (used as is). With a LoRA `checkpoint` both
    base and adapter count; a full-weights checkpoint stands alone. `template` defaults to the fingerprint
    recorded in the checkpoint; pass `template_fingerprint(tokenizer)` for a bare base model.
    """
    from sftjudge.checkpoints import checkpoint_meta

    parts: dict[str, Any] = {"engine": engine}
    meta = checkpoint_meta(checkpoint) if checkpoint is not None else None
    if meta is None or meta["method"] != "full":
        parts["base"] = weights_digest(Path(base)) if Path(base).is_dir() else f"hub:{base}"
    if checkpoint is not None:
        parts["checkpoint"] = weights_digest(Path(checkpoint))
    parts["template"] = template or (meta["template_fingerprint"] if meta else None)
    return _sha256_json(parts)[:32]


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


def generate_cached(rows: list[Example], prompts: list[str], params: GenerationParams, path: Path,
                    fingerprint: str, model_label: str, generator: Generator, *,
                    chunk_size: int = 8) -> CachedGenerations:
    """Generate every row not already in `path`, appending each chunk as it finishes; rewrite `path` in row order.

    `generator` is called only when something is missing: pass a `LazyGenerator` and a fully cached retry
    loads no model. Missing prompts are sorted by length before chunking, so each chunk is one evenly padded
    batch. At the end `path` holds exactly `rows`' records, in order (stale keys from other settings are
    dropped). Raises ValueError when `rows` and `prompts` differ in length.
    """
    from sftjudge.progress import progress

    if len(rows) != len(prompts):
        raise ValueError(f"{len(rows)} rows but {len(prompts)} prompts; render one prompt per row")
    cache = GenerationCache(path).load()
    keys = [item_key(fingerprint, p, params) for p in prompts]
    first_row_of: dict[str, int] = {}  # rows sharing a prompt share one answer: generate it once
    for i, key in enumerate(keys):
        if key not in cache.records:
            first_row_of.setdefault(key, i)
    missing = sorted(first_row_of.values(), key=lambda i: len(prompts[i]))
    with progress(total=len(missing), desc="generate", unit="answer", disable=not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start:start + chunk_size]
            generations = generator.generate([prompts[i] for i in chunk], params)
            if len(generations) != len(chunk):
                raise RuntimeError(f"the generator returned {len(generations)} answers for {len(chunk)} prompts")
            cache.append([_record(rows[i], prompts[i], gen.to_json(), fingerprint, params, keys[i], model_label)
                          for i, gen in zip(chunk, generations)])
            bar.update(len(chunk))
    records = [_record(row, prompt, cache.records[key], fingerprint, params, key, model_label)
               for row, prompt, key in zip(rows, prompts, keys)]
    write_jsonl(Path(path), records)
    return CachedGenerations(records=records, generated=len(missing), reused=len(rows) - len(missing),
                             dropped_lines=cache.dropped_lines, model_fingerprint=fingerprint)


def _record(row: Example, prompt: str, generation: dict[str, Any], fingerprint: str, params: GenerationParams,
            key: str, model_label: str) -> dict[str, Any]:
    # Built from the row each time: two rows with the same prompt share one cached answer but keep their own ids.
    fields = {name: generation[name] for name in GENERATION_FIELDS}
    return answer_record(row, prompt, fields, model_label) | {
        "key": key, "model_fingerprint": fingerprint, "prompt_hash": prompt_hash(prompt),
        "params": params.to_json()}


def baseline_path(home: Path, base: str, fingerprint: str, test_fingerprint: str,
                  params: GenerationParams) -> Path:
    """`$SFTJUDGE_HOME/baselines/<base name>-<key>.jsonl`; the key covers the model, the test split and params."""
    key = _sha256_json([fingerprint, test_fingerprint, params.to_json()])[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base.rstrip("/")).name)[:60] or "base"
    return Path(home) / "baselines" / f"{name}-{key}.jsonl"


@contextmanager
def _exclusive(path: Path):
    # Two runs on one dataset may ask for the same baseline at once; the second waits, then finds it cached.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def generate_baseline(base: str, rows: list[Example], params: GenerationParams, home: Path, *,
                      backend: str = "transformers", batch_size: int = 8, precision: str = "auto",
                      trust_remote_code: bool = False, tokenizer=None,
                      generator: Generator | None = None) -> CachedGenerations:
    """Answers of the base model (no fine-tune) to `rows`, generated once per (model, test split, params).

    `base` is a resolved model path (see `resolve_model`). The file lives under `home/baselines/` and is shared
    by every run on the same test split, so only the first run pays; an interrupted one resumes. The model is
    loaded only when something is missing, and closed after. `tokenizer`/`generator` default to the base
    model's own (tests pass their own). Raises TemplateError when the base tokenizer has no chat template.
    """
    from sftjudge.chat import template_fingerprint
    from sftjudge.generate import LazyGenerator, make_generator
    from sftjudge.split import split_fingerprint

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    own = generator is None
    generator = generator or LazyGenerator(lambda: make_generator(
        backend, base, None, batch_size=batch_size, precision=precision, trust_remote_code=trust_remote_code)[0])
    prompts = prompts_for(tokenizer, rows)
    fingerprint = model_fingerprint(base, template=template_fingerprint(tokenizer),
                                    engine=engine_id(backend, precision))
    path = baseline_path(home, base, fingerprint, split_fingerprint(rows), params)
    try:
        with _exclusive(path):
            return generate_cached(rows, prompts, params, path, fingerprint, f"base:{Path(base).name}",
                                   generator, chunk_size=batch_size)
    finally:
        if own:
            generator.close()
