"""Epoch checkpoints: weights as safetensors, the template fingerprint, and the state needed to resume.

The trainer writes an epoch's checkpoint (weights, tokenizer, optimizer, scheduler, RNG states, trainer state)
into a staging folder; `publish_checkpoint` adds the epoch history and the metadata and moves it to `epoch-N/` in
one rename. So after a crash - SIGKILL included - the newest `epoch-N/` is always complete, and training resumes
from it with the optimizer, scheduler and RNG states it had, reproducing the uninterrupted run; a half-written
staging folder is never taken for a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from sftjudge.run.io import atomic_directory, atomic_write_json, publish_directory

CHECKPOINT_META = "sftjudge-checkpoint.json"
TRAINING_STATE = "training_state.pt"  # the epoch history (tensors, numbers and lists only)
TRAINER_STATE = "trainer_state.json"  # the trainer's step counter and log; its optimizer and RNG files sit beside
STAGING = ".staging"  # inside the checkpoints folder: where the trainer writes before an epoch is published
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def save_checkpoint(model, tokenizer, out: Path, meta: dict[str, Any], *,
                    training_state: dict[str, Any] | None = None) -> Path:
    """Save adapter (LoRA) or full weights as safetensors plus tokenizer and metadata, atomically.

    `meta` holds the epoch, the method ("lora" or "full") and the template fingerprint; `training_state`
    (optimizer, scheduler, RNG states, history) is saved beside the weights when given.
    """
    import torch

    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
        atomic_write_json(tmp / CHECKPOINT_META, {k: meta[k] for k in ("epoch", "method", "template_fingerprint")})
    return out


def publish_checkpoint(staged: Path, out: Path, meta: dict[str, Any], *, training_state: dict[str, Any]) -> Path:
    """Complete the trainer's checkpoint in `staged` with `training_state` and the metadata, then move it to
    `out` in one step; the staging folder goes when it is empty."""
    import torch

    torch.save(training_state, staged / TRAINING_STATE)
    atomic_write_json(staged / CHECKPOINT_META, {k: meta[k] for k in ("epoch", "method", "template_fingerprint")})
    publish_directory(staged, out)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()
    return out


def check_resumable(path: Path, method: str) -> dict[str, Any]:
    """The training state of a checkpoint that training can resume from; raises what reading it raised.

    Each weights file's header is checked against its size (a torn or truncated file fails here, not halfway
    into the trainer) and the training state is read only as tensors, numbers and lists: a pickle carrying code is
    refused, never run.
    """
    from safetensors import safe_open

    saved = load_training_state(path)
    if saved is None:
        raise FileNotFoundError(f"no {TRAINING_STATE}")
    if not (Path(path) / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"no {TRAINER_STATE} (a checkpoint of an sftjudge before its trainer engine)")
    weights = sorted(Path(path).glob("model*.safetensors" if method == "full" else "adapter_model.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no {'model' if method == 'full' else 'adapter_model'}*.safetensors")
    for file in weights:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    return saved


def checkpoint_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / CHECKPOINT_META).read_text())


def epoch_checkpoints(checkpoints_dir: Path) -> dict[int, Path]:
    """Complete epoch checkpoints by epoch number (temp dirs of an interrupted save are ignored)."""
    found = {}
    if Path(checkpoints_dir).is_dir():
        for path in Path(checkpoints_dir).iterdir():
            match = _EPOCH_DIR.match(path.name)
            if match and (path / CHECKPOINT_META).is_file():
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The resume state saved with a checkpoint, or None when it was saved without one."""
    import torch

    state_file = Path(path) / TRAINING_STATE
    # weights_only: the file holds tensors, numbers and tuples only; never unpickle arbitrary objects.
    return torch.load(state_file, weights_only=True) if state_file.is_file() else None


def restore_weights(model, path: Path, method: str) -> None:
    """Load a checkpoint's trained weights into the in-memory model (adapter or full weights)."""
    from safetensors.torch import load_file

    if method == "full":
        state = load_file(str(Path(path) / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied output embeddings are saved once; anything else missing means a different architecture.
        real_missing = [k for k in missing if "lm_head" not in k]
        if real_missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not match the model (missing {real_missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        return
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))


def prune_checkpoints(checkpoints_dir: Path, *, keep: set[int]) -> list[int]:
    """Delete epoch checkpoints not in `keep`; return the epochs removed. The best epoch is always in `keep`."""
    removed = []
    for epoch, path in epoch_checkpoints(checkpoints_dir).items():
        if epoch not in keep:
            shutil.rmtree(path)
            removed.append(epoch)
    return removed
