"""Epoch checkpoints: weights as safetensors, the template fingerprint, and the state needed to resume.

Each `epoch-N/` directory is written whole or not at all (temp dir + rename), so after a crash - SIGKILL
included - the newest `epoch-N/` is always complete, and training resumes from it with the optimizer,
scheduler and RNG states it had, reproducing the uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from sftjudge.run.io import atomic_directory, atomic_write_json

CHECKPOINT_META = "sftjudge-checkpoint.json"
TRAINING_STATE = "training_state.pt"
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
