"""Stable ids of a model as it computes: weights content, chat template and the engine that runs them.

Two answers (or two judgments) are interchangeable only when the same weights, rendered through the same
template, ran on the same engine and dtype; these fingerprints say exactly that, for the generation caches,
the base-model baselines and the judge's identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from sftjudge.run.io import file_sha256
from sftjudge.runtime.device import compute_dtype

# Small files that change what the weights compute (architecture, LoRA scaling); hashed with the weights.
_CONFIG_FILES = ("config.json", "adapter_config.json")
# The run's precision setting as vLLM's dtype ("auto": the checkpoint's own dtype).
VLLM_DTYPE = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# A transformers engine's dtype as its id writes it.
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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
    return sha256_json([(name, file_sha256(Path(directory) / name)) for name, _, _ in stamp])


def model_fingerprint(base: str, checkpoint: Path | None = None, *, template: str | None = None,
                      engine: str = "") -> str:
    """A stable id of the model as served: weights content, chat template and engine (see `engine_id`).

    `base` is a model directory (its weights are hashed) or a hub id (used as is). With a LoRA `checkpoint` both
    base and adapter count; a full-weights checkpoint stands alone. `template` defaults to the fingerprint
    recorded in the checkpoint; pass `template_fingerprint(tokenizer)` for a bare base model.
    """
    from sftjudge.train.checkpoints import checkpoint_meta

    parts: dict[str, Any] = {"engine": engine}
    meta = checkpoint_meta(checkpoint) if checkpoint is not None else None
    if meta is None or meta["method"] != "full":
        parts["base"] = weights_digest(Path(base)) if Path(base).is_dir() else f"hub:{base}"
    if checkpoint is not None:
        parts["checkpoint"] = weights_digest(Path(checkpoint))
    parts["template"] = template or (meta["template_fingerprint"] if meta else None)
    return sha256_json(parts)[:32]


def engine_id(backend: str, precision: str) -> str:
    """What else, besides the weights, decides the numbers: backend and dtype (bf16 and fp32 greedy differ)."""
    if backend == "vllm":
        return f"vllm/{VLLM_DTYPE[precision]}"
    return f"transformers/{_SHORT_DTYPE[compute_dtype(precision)]}"
