"""Export a run's chosen checkpoint: the LoRA adapter merged into the base model (or the full weights), saved as
safetensors in bf16 (or fp32), with the tokenizer and the chat template it was trained with, a generation config
holding the run's decoding settings, and a model card. The folder loads with `AutoModelForCausalLM` and with vLLM;
greedy decoding from it gives the run's own test answers when exported in the dtype the run generated with."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sftjudge.errors import ModelError
from sftjudge.run import files
from sftjudge.run.io import atomic_directory

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
MARKER = "sftjudge-export.json"  # in every export: what --overwrite may replace


def export_run(run: Path, out: Path, home: Path, *, dtype: str = "bf16", overwrite: bool = False) -> Path:
    """Write the run's chosen checkpoint to `out` as a standalone model folder; return `out`.

    Raises ModelError when the run has no finished training, or `out` exists (unless `overwrite`).
    """
    import torch

    from sftjudge.config_yaml import load_config
    from sftjudge.export.card import model_card
    from sftjudge.generate.loading import load_finetuned
    from sftjudge.models.embedded import resolve_model

    summary_path = run / files.SFT_SUMMARY
    if not summary_path.is_file():
        raise ModelError(f"{run}: no {files.SFT_SUMMARY}: the run's sft stage has not finished, so there is no "
                         f"checkpoint to export")
    _check_target(out, overwrite)
    sft = json.loads(summary_path.read_text())
    config = load_config(run / files.CONFIG)
    checkpoint = Path(sft["best_checkpoint"])
    if not checkpoint.is_absolute() and not checkpoint.exists():
        checkpoint = run / files.CHECKPOINTS / checkpoint.name  # a run directory moved since it trained
    base = resolve_model(config.sft.base_model, home)
    # Merged in float32 (as the generate stage merges), then cast: the weights the run's answers came from.
    model, tokenizer = load_finetuned(base, checkpoint, precision="fp32",
                                      trust_remote_code=config.sft.trust_remote_code)
    model = model.to(dtype=getattr(torch, DTYPES[dtype]))
    model.config.torch_dtype = getattr(torch, DTYPES[dtype])
    _decoding(model, tokenizer, config.generate)
    # The old export stays in place until the new one is complete: atomic_directory swaps them in one rename.
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run, config, sft, DTYPES[dtype]), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({
            "run_id": run.name, "checkpoint": str(checkpoint), "epoch": sft.get("best_epoch"), "dtype": dtype,
            "base_model": config.sft.base_model, "method": sft.get("method")}, indent=2))
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that exists, unless `overwrite` and it is an earlier export (or an empty folder): a folder of
    someone's files, or the runs directory itself, is never replaced. Raises ModelError."""
    if not out.exists() and not out.is_symlink():
        _check_parent(out)
        return
    if not overwrite:
        raise ModelError(f"{out} exists; choose another folder or pass --overwrite")
    if not out.is_dir() or out.is_symlink():
        raise ModelError(f"{out} is not a folder; --overwrite replaces only an earlier export")
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise ModelError(f"{out} is not an sftjudge export (it has no {MARKER}); --overwrite replaces only an "
                         f"earlier export, so nothing was deleted: choose another folder")


def _check_parent(out: Path) -> None:
    """Refuse, before any model is loaded, an `out` whose folder cannot be made or written: under a file, under
    /proc, read-only. Raises ModelError."""
    parent = out.absolute().parent
    for folder in (parent, *parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ModelError(f"{out}: {folder} is a file, so no folder can be made under it; choose another "
                                 f"export path")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise ModelError(f"{out}: cannot write under {parent} ({exc.strerror}); choose a folder you can write "
                         f"to") from None


def _decoding(model, tokenizer, generate) -> None:
    """The run's decoding settings as the model's generation config: greedy (or its temperature), max new tokens,
    the end-of-turn token as eos."""
    gen = model.generation_config
    gen.do_sample = generate.temperature > 0
    if generate.temperature > 0:
        gen.temperature = generate.temperature
    else:  # greedy: sampling settings inherited from the base model would only draw warnings
        gen.temperature = gen.top_p = gen.top_k = None
    gen.max_new_tokens = generate.max_new_tokens
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    if generate.stop:
        gen.stop_strings = list(generate.stop)
