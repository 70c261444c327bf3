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


def _seven_b_shape(seven_b, sftjudge_home, **lora):
    return model_shape(seven_b, sftjudge_home, **lora)


def test_a_full_fine_tune_counts_autocast_copies_and_the_optimizer_steps_temporaries(seven_b, sftjudge_home):
    shape = _seven_b_shape(seven_b, sftjudge_home)
    base = (f"sft.base_model={seven_b}", "sft.method=full", "sft.precision=bf16", "sft.gradient_checkpointing=true",
            "sft.max_seq_len=512")
    # a small batch: AdamW's multi-tensor step (one float32 temporary per weight) is the larger transient
    small = Planner(tiny_config(*base, "sft.batch_size=1"), sftjudge_home, Target.here(120, cuda=True)).plan("sft")
    parts = small.estimate.parts
    assert parts["weights"] == shape.params * 4 and parts["optimizer"] == shape.params * 12
    assert parts["optimizer step"] == shape.params * 4 and "activations" not in parts
    # 100 GiB of weights and AdamW state plus 25 of the step's temporaries: an earlier plan said ~102 GiB fit here
    assert 125 * GIB < small.estimate.total and not small.fits
    # a large batch: the backward pass is larger, and under bf16 autocast it holds a bf16 copy of every weight
    large = Planner(tiny_config(*base, "sft.batch_size=64", "sft.gradient_checkpointing=false"), sftjudge_home,
                    Target.here(1000, cuda=True)).plan("sft").estimate.parts
    assert large["autocast copies"] == shape.params * 2 and "optimizer step" not in large
    assert large["activations"] + large["logits"] + large["autocast copies"] > shape.params * 4


def test_qlora_keeps_the_embeddings_and_output_layer_in_bf16(seven_b, sftjudge_home):
    shape = _seven_b_shape(seven_b, sftjudge_home, lora_r=16, lora_targets=("q_proj", "v_proj"))
    assert shape.embedding_params == 2 * 32000 * 4096  # untied: input embeddings and lm_head
    config = tiny_config(f"sft.base_model={seven_b}", "sft.quantization=4bit", "sft.precision=bf16", "sft.lora_r=16",
                         "sft.target_modules=[q_proj, v_proj]")
    weights = Planner(config, sftjudge_home, Target.here(24, cuda=True)).plan("sft").estimate.parts["weights"]
    # NF4 for the linear layers, bf16 for the 262M embedding parameters bitsandbytes does not quantise
    expected = (shape.params - shape.embedding_params) * 0.55 + shape.embedding_params * 2 + shape.lora_params * 4
    assert weights == int((shape.params - shape.embedding_params) * 0.55 + shape.embedding_params * 2) \
        + shape.lora_params * 4 == pytest.approx(expected, abs=1)


def test_transformers_generate_loads_float32_in_host_ram_not_on_the_card(seven_b, sftjudge_home):
    config = tiny_config(f"sft.base_model={seven_b}", "sft.precision=bf16", "generate.backend=transformers")
    roomy = Target(cuda=True, free=80 * GIB, total=80 * GIB, name="an 80 GiB card", host_free=200 * GIB)
    planned = Planner(config, sftjudge_home, roomy).plan("generate")
    # on the card: bf16 weights and the cache; the 25 GiB float32 load was counted here before
    assert "weights (float32 while loading)" not in planned.estimate.parts and planned.fits
    assert planned.estimate.parts["weights"] == model_shape(seven_b, sftjudge_home).params * 2
    small_host = Target(cuda=True, free=80 * GIB, total=80 * GIB, name="an 80 GiB card", host_free=16 * GIB)
    refused = Planner(config, sftjudge_home, small_host).plan("generate")
    assert not refused.fits and "host RAM" in refused.message(small_host)


def test_a_vllm_judge_is_planned_as_a_reservation_of_the_card(seven_b, sftjudge_home):
    config = tiny_config(f"judge.model={seven_b}", "judge.backend=vllm", "judge.precision=bf16",
                         "generate.gpu_memory_utilization=0.1")
    planned = Planner(config, sftjudge_home, Target.here(80, cuda=True)).plan("judge")
    # vLLM takes its share up front, whatever judge.batch_size or the prefix store say
    assert planned.estimate.parts["vllm reservation"] == int(80 * GIB * 0.1)
    assert "prefix store" not in planned.estimate.parts
    assert not planned.fits and "vLLM needs ~" in planned.message(Target.here(80, cuda=True))
    share = planned.suggestions[0][0]["generate.gpu_memory_utilization"]
    assert Planner(tiny_config(f"judge.model={seven_b}", "judge.backend=vllm", "judge.precision=bf16",
                               f"generate.gpu_memory_utilization={share}"), sftjudge_home,
                   Target.here(80, cuda=True)).plan("judge").fits
