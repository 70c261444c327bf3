"""The memory planner: exact parameter counts from config.json alone, refusals that name settings which fit, the
stage check that refuses before a model is loaded, and `sftjudge plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftjudge.cli import main
from sftjudge.config_yaml import load_config
from sftjudge.errors import UserError
from sftjudge.plan.check import MemoryPlanError, Planner, Target
from sftjudge.plan.shape import model_shape

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30
# A 7B student's config.json alone (Llama-2-7B's dimensions): the planner needs no weights.
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "num_hidden_layers": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


@pytest.fixture
def seven_b(tmp_path) -> str:
    folder = tmp_path / "llama-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    return str(folder)


def tiny_config(*overrides: str):
    return load_config(str(REPO / "configs" / "tiny.yaml"), list(overrides))


@pytest.mark.model
def test_the_shape_counts_exactly_the_parameters_the_loaded_model_has(tiny_model, sftjudge_home):
    model, _ = tiny_model
    shape = model_shape("tiny", sftjudge_home, lora_r=4, lora_targets=("q_proj", "v_proj"))
    assert shape.params == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    import copy

    from peft import LoraConfig, get_peft_model
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert shape.lora_params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_a_7b_lora_on_a_16_gib_card_is_refused_with_settings_that_fit(seven_b, sftjudge_home):
    base = (f"sft.base_model={seven_b}", "sft.method=lora", "sft.batch_size=16", "sft.max_seq_len=1024")
    target = Target.here(16, cuda=True)
    # float32 base weights (precision fp32): 27 GiB cannot shrink below 16 by batch or checkpointing
    fp32 = Planner(tiny_config(*base, "sft.precision=fp32"), sftjudge_home, target).plan("sft")
    assert fp32.estimate.parts["weights"] > 25 * GIB and not fp32.fits
    message = fp32.message(target)
    assert "sft needs ~" in message and "16 GiB free" in message and "does not fit" in message
    assert fp32.suggestions == [] and "smaller model or a larger device" in message
    # bf16 base weights, as the sft stage loads a LoRA student: half the weights; the batch's activations then
    # decide, and smaller batches (the effective batch kept) or checkpointing fit the card
    config = tiny_config(*base, "sft.precision=bf16")
    planned = Planner(config, sftjudge_home, target).plan("sft")
    assert 12 * GIB < planned.estimate.parts["weights"] < 14 * GIB
    assert not planned.fits and planned.suggestions
    for change, estimate in planned.suggestions:
        assert estimate.total <= 16 * GIB
        changed = tiny_config(*base, "sft.precision=bf16", *(f"{k}={json.dumps(v)}" for k, v in change.items()))
        # a suggestion is a real override, and under it the same planner says: fits
        assert Planner(changed, sftjudge_home, target).plan("sft").fits
        if "sft.batch_size" in change:  # the effective batch is kept
            assert change["sft.batch_size"] * change["sft.grad_accum"] == 16
    qlora = Planner(tiny_config(*base, "sft.precision=bf16", "sft.quantization=4bit"), sftjudge_home,
                    target).plan("sft")
    assert qlora.estimate.parts["weights"] < 4.5 * GIB  # NF4 base weights plus float32 adapters


def test_the_judge_is_refused_on_its_prefix_budget_and_told_to_shrink_it(seven_b, sftjudge_home):
    config = tiny_config(f"judge.model={seven_b}", "judge.precision=bf16", "judge.prefix_cache_mb=8192",
                         "judge.batch_size=1")
    planned = Planner(config, sftjudge_home, Target.here(20, cuda=True)).plan("judge")
    assert not planned.fits
    assert planned.suggestions[0][0] == {"judge.prefix_cache_mb": 2048}


def test_vllm_asks_for_a_share_of_the_card_that_holds_the_model(seven_b, sftjudge_home):
    config = tiny_config(f"sft.base_model={seven_b}", "generate.backend=vllm", "generate.gpu_memory_utilization=0.3")
    planned = Planner(config, sftjudge_home, Target.here(40, cuda=True)).plan("generate")
    assert not planned.fits and "vLLM needs ~" in planned.message(Target.here(40, cuda=True))
    share = planned.suggestions[0][0]["generate.gpu_memory_utilization"]
    assert 0.3 < share <= 0.95
    assert Planner(tiny_config(f"sft.base_model={seven_b}", "generate.backend=vllm",
                               f"generate.gpu_memory_utilization={share}"),
                   sftjudge_home, Target.here(40, cuda=True)).plan("generate").fits


@pytest.mark.model
def test_a_stage_that_will_not_fit_fails_before_loading_its_model(tmp_path, monkeypatch, sftjudge_home, tiny_model):
    from sftjudge.run.directory import RunDir
    from sftjudge.train.stage import sft_stage

    monkeypatch.setattr("sftjudge.plan.check.Target.here", lambda *a, **k: Target(cuda=False, free=GIB // 100,
                                                                                  total=GIB, name="a tiny box"))
    loaded = []
    monkeypatch.setattr("sftjudge.train.stage.load_causal_lm", lambda *a, **k: loaded.append(a))
    config = tiny_config(f"runs_dir={tmp_path}")
    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    with pytest.raises(MemoryPlanError, match="sft needs ~.*a tiny box.*does not fit") as raised:
        sft_stage(str(run.path), config)
    assert isinstance(raised.value, UserError)  # not retried: the same config would fail the same way
    assert loaded == []
    assert run.manifest()["stages"]["sft"]["status"] == "failed"
    # memory_check=false lets the stage go on (here it then fails on the missing curated data, not on memory)
    with pytest.raises(Exception) as other:
        sft_stage(str(run.path), tiny_config(f"runs_dir={tmp_path}", "memory_check=false"))
    assert not isinstance(other.value, MemoryPlanError)


def test_sftjudge_plan_prints_each_stage_and_exits_3_when_one_does_not_fit(seven_b, capsys, sftjudge_home):
    config = str(REPO / "configs" / "tiny.yaml")
    assert main(["plan", config, "--cpu-gib", "64"]) == 0
    out = capsys.readouterr().out
    assert "sft needs ~" in out and "generate needs ~" in out and "judge needs ~" in out and "fits" in out
    assert main(["plan", config, f"sft.base_model={seven_b}", "sft.batch_size=16", "sft.max_seq_len=1024",
                 "--gpu-gib", "80", "--json"]) == 3
    planned = json.loads(capsys.readouterr().out)
    sft = next(s for s in planned["stages"] if s["stage"] == "sft")
    assert sft["fits"] is False and sft["suggestions"] and planned["target"]["cuda"] is True


@pytest.mark.model
def test_a_model_stage_records_its_plan_and_measured_memory_in_the_manifest(tmp_path, sftjudge_home, tiny_model):
    from sftjudge.run.directory import RunDir
    from sftjudge.run.stage import run_stage

    run = RunDir.create(tmp_path, "name: x\n", "x", run_id="r1")
    run_stage("judge", run.path, tiny_config(f"runs_dir={tmp_path}"), lambda ctx: None)
    memory = run.stage_info("judge")["memory"]
    assert memory["planned_bytes"] > 0 and memory["peak_rss_bytes"] > 0  # on a GPU: free memory before and after
    run_stage("curate", run.path, tiny_config(f"runs_dir={tmp_path}"), lambda ctx: None)
    assert "memory" not in run.stage_info("curate")  # no model, no plan
