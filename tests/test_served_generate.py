"""generate.backend: vllm as a served engine (issue 25: vLLM in its own environment, item 12), on the CPU.

The stage starts its server with the project's own `start_server`, which here runs a stand-in for vLLM's OpenAI
server (tests/vllm_stand_in.py: real HTTP, the tiny model through transformers, LoRA adapters by name). What is
checked: one server answers for the student (its LoRA adapter) and the base model (no adapter), with the flags
that size it for the run; the answers, token counts and finish reasons equal the in-process transformers backend's;
the server is gone when the stage ends; a retried stage with every answer cached starts none; a full checkpoint and
the base model never hold the card at the same time; a long-lived server (vllm.base_url) gets the adapter at
runtime. The real `vllm serve` runs the same path in `make vllm-check` (tests/test_served_vllm.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import example
from vllm_stand_in import alive, records

from sftjudge.config import RunConfig
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_jsonl, write_jsonl

pytestmark = pytest.mark.model


def _lora_checkpoint(model_dir: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from sftjudge.models.chat import template_fingerprint
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(str(model_dir))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    meta = {"epoch": 1, "method": "lora", "template_fingerprint": template_fingerprint(tokenizer)}
    return save_checkpoint(model, tokenizer, out, meta)


def _full_checkpoint(model_dir: Path, out: Path) -> Path:
    from sftjudge.models.chat import template_fingerprint
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import save_checkpoint

    model, tokenizer = load_causal_lm(str(model_dir))
    meta = {"epoch": 1, "method": "full", "template_fingerprint": template_fingerprint(tokenizer)}
    return save_checkpoint(model, tokenizer, out, meta)


def _run(tmp_path: Path, tiny_model_dir: Path, method: str, **settings) -> tuple[RunDir, RunConfig]:
    run = RunDir.create(tmp_path / "runs", "name: t\n", "t", run_id=f"served-{method}")
    write_jsonl(run / files.TEST, [example(i, f"q{i} " + "why " * i).to_json() for i in range(5)])
    make = _lora_checkpoint if method == "lora" else _full_checkpoint
    ckpt = make(tiny_model_dir, run / files.CHECKPOINTS / "epoch-1")
    (run / files.SFT_SUMMARY).write_text(json.dumps({"best_checkpoint": str(ckpt), "best_epoch": 1}))
    config = RunConfig.model_validate({
        "sft": {"base_model": str(tiny_model_dir), "precision": "fp32"}, "regression": {"enabled": False},
        "generate": {"backend": "vllm", "max_new_tokens": 6, "baseline": True},
        "vllm": {"python": sys.executable, "startup_s": 120} | settings, "home": str(tmp_path / "home")})
    return run, config


def _transformers_answers(config: RunConfig, base: str, checkpoint: Path | None, prompts: list[str]):
    from sftjudge.generate.backends import Engine, generation_params
    from sftjudge.generate.loading import make_generator

    engine = Engine.for_student(config.model_copy(update={"generate": config.generate.model_copy(
        update={"backend": "transformers"})}))
    generator = make_generator(engine, base, checkpoint)[0]
    return [g.to_json() | {"seconds": None} for g in generator.generate(prompts, generation_params(config.generate))]


def _answers(path: Path) -> list[dict]:
    keep = ("text", "prompt_tokens", "completion_tokens", "finish_reason")
    return [{k: r[k] for k in keep} | {"seconds": None} for r in read_jsonl(path)]


def _without_seconds(rows: list[dict]) -> list[dict]:
    keep = ("text", "prompt_tokens", "completion_tokens", "finish_reason")
    return [{k: r[k] for k in keep} | {"seconds": None} for r in rows]


def test_one_server_answers_for_the_lora_student_and_the_base_model(tmp_path, tiny_model_dir, stand_in,
                                                                    monkeypatch):
    from sftjudge.generate import stage
    from sftjudge.generate.stage import generate_stage

    chunks, real = [], stage.generate_baseline
    monkeypatch.setattr(stage, "generate_baseline",
                        lambda *args, chunk_size: chunks.append(chunk_size) or real(*args, chunk_size=chunk_size))
    run, config = _run(tmp_path, tiny_model_dir, "lora")
    counts = generate_stage(str(run.path), config)["counts"]
    assert chunks == [256]  # the base model's prompts reach vLLM in one go, not in transformers' batches of 8
    assert counts["generated"] == 5
    started = [r for r in records(stand_in) if "argv" in r]
    assert len(started) == 1, "the base model's answers started a second engine"
    argv = " ".join(started[0]["argv"])
    checkpoint = json.loads((run / files.SFT_SUMMARY).read_text())["best_checkpoint"]
    assert f"--enable-lora --lora-modules student={checkpoint}" in argv and "--max-lora-rank 8" in argv
    assert "--max-model-len 262" in argv and "--dtype float32" in argv  # 256 + 6: sized for the run
    asked = [r["model"] for r in records(stand_in) if r.get("path", "").endswith("/completions")]
    assert sorted(asked) == ["base"] * 5 + ["student"] * 5
    # the same answers, token counts and finish reasons as the in-process transformers backend
    prompts = [r["prompt"] for r in read_jsonl(run / files.GENERATIONS)]
    assert _answers(run / files.GENERATIONS) == _transformers_answers(config, str(tiny_model_dir),
                                                                        Path(checkpoint), prompts)
    base_prompts = [r["prompt"] for r in read_jsonl(run / files.BASELINE_GENERATIONS)]
    assert _answers(run / files.BASELINE_GENERATIONS) == _transformers_answers(config, str(tiny_model_dir), None,
                                                                                 base_prompts)
    assert not alive(started[0]["pid"]), "the stage left its vLLM server running"

    run._set_stage("generate", {"status": "failed"})  # a retry finds every answer cached
    assert generate_stage(str(run.path), config)["counts"]["generated"] == 0
    assert len([r for r in records(stand_in) if "argv" in r]) == 1, "a fully cached retry started a server"


def test_a_full_checkpoint_and_the_base_model_never_share_the_card(tmp_path, tiny_model_dir, stand_in):
    from sftjudge.generate.stage import generate_stage

    run, config = _run(tmp_path, tiny_model_dir, "full", enforce_eager=True)
    generate_stage(str(run.path), config)
    started = [r for r in records(stand_in) if "argv" in r]
    assert [r["argv"][r["argv"].index("--model") + 1] for r in started] == [
        json.loads((run / files.SFT_SUMMARY).read_text())["best_checkpoint"], str(tiny_model_dir)]
    assert all(r["alive_before"] == [] for r in started)  # the student's server was stopped first
    assert "--enable-lora" not in started[0]["argv"]
    assert all("--enforce-eager" in r["argv"] for r in started)  # vllm.enforce_eager: a quicker start


def test_a_long_lived_server_gets_the_adapter_at_runtime(tmp_path, tiny_model_dir, stand_in, monkeypatch):
    from sftjudge.generate.stage import generate_stage
    from sftjudge.runtime.vllm_server import ServeSettings, vllm_server

    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    with vllm_server(sys.executable, tiny_model_dir, ServeSettings(name="sidecar-base", startup_s=120)) as url:
        run, config = _run(tmp_path, tiny_model_dir, "lora", base_url=url)
        generate_stage(str(run.path), config)
    calls = [r for r in records(stand_in) if "path" in r]
    loaded = [r for r in calls if r["path"].endswith("/load_lora_adapter")]
    assert len(loaded) == 1 and len([r for r in records(stand_in) if "argv" in r]) == 1  # nothing started
    adapter = next(r["model"] for r in calls if r["path"].endswith("/completions") and r["model"] != "sidecar-base")
    assert adapter.startswith("sftjudge-")
    assert [r["path"] for r in calls][-1].endswith("/unload_lora_adapter")
    assert _without_seconds(read_jsonl(run / files.GENERATIONS)) == _transformers_answers(
        config, str(tiny_model_dir), Path(json.loads((run / files.SFT_SUMMARY).read_text())["best_checkpoint"]),
        [r["prompt"] for r in read_jsonl(run / files.GENERATIONS)])


def test_without_a_vllm_environment_the_stage_says_what_to_set(tmp_path, tiny_model_dir, monkeypatch):
    from sftjudge.errors import ConfigError
    from sftjudge.generate.stage import generate_stage

    monkeypatch.delenv("SFTJUDGE_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `vllm` command anywhere
    run, config = _run(tmp_path, tiny_model_dir, "lora")
    config = config.model_copy(update={"vllm": config.vllm.model_copy(update={"python": None})})
    with pytest.raises(ConfigError, match="vllm.python"):
        generate_stage(str(run.path), config)

