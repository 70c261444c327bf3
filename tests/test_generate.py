import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import example

from sftjudge.errors import TemplateError
from sftjudge.generate.backends import (
    Engine,
    GenerationParams,
    LazyGenerator,
    TransformersGenerator,
    VLLMGenerator,
    generate_answers,
    prompts_for,
)
from sftjudge.generate.cache import (
    AnsweringModel,
    GenerationCache,
    UntunedModel,
    generate_baseline,
    generate_cached,
)
from sftjudge.generate.loading import (
    check_template,
    checkpoint_tokenizer,
    load_finetuned,
    make_generator,
)
from sftjudge.models.chat import template_fingerprint
from sftjudge.models.fingerprint import model_fingerprint
from sftjudge.models.loading import load_causal_lm
from sftjudge.run import files
from sftjudge.run.io import read_jsonl
from sftjudge.train.checkpoints import CHECKPOINT_META, save_checkpoint

pytestmark = pytest.mark.model


# The tiny model's random weights (tied embeddings, small layers) repeat the prompt's last token greedily:
# "billing 7" -> "77777777". That makes each answer tell which prompt it belongs to.
RAW_PROMPTS = {"Rate the candidate answer": "answer", "billing 7": "7", "The quick brown fox": "ox",
               "What is 2+2?": "?", "router refund": "nd"}


def test_batched_generation_sorts_batches_by_length_and_keeps_input_order(tiny_model, monkeypatch):
    model, tok = tiny_model
    prompts = list(RAW_PROMPTS)
    gen = TransformersGenerator(model, tok, batch_size=2)
    batches = []
    run_batch = gen._generate_batch
    monkeypatch.setattr(gen, "_generate_batch", lambda ps, params: batches.append(ps) or run_batch(ps, params))
    out = gen.generate(prompts, GenerationParams(max_new_tokens=4))

    lengths = {p: len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    ran = [lengths[p] for batch in batches for p in batch]
    assert ran == sorted(ran) and [len(b) for b in batches] == [2, 2, 1]
    assert ran != [lengths[p] for p in prompts]  # the input order is not already sorted: the test can fail
    assert [g.text.replace(" ", "") for g in out] == [tail * 4 for tail in RAW_PROMPTS.values()]
    assert [g.prompt_tokens for g in out] == [lengths[p] for p in prompts]
    single = [TransformersGenerator(model, tok, batch_size=1).generate([p], GenerationParams(max_new_tokens=4))[0]
              for p in prompts]
    assert [g.text for g in out] == [g.text for g in single]  # left padding does not change greedy output
    assert all(g.completion_tokens == 4 and g.finish_reason == "length" for g in out)


def test_stop_strings_cut_the_answer_per_row(tiny_model):
    model, tok = tiny_model
    gen = TransformersGenerator(model, tok, batch_size=4)
    prompts = ["Rate the candidate answer", "The quick brown fox", "billing 7"]
    out = gen.generate(prompts, GenerationParams(max_new_tokens=8, stop=("r a", "77")))
    # " answer answer ..." is cut before the first "r a", which completes with the 2nd generated token.
    assert (out[0].text, out[0].completion_tokens, out[0].finish_reason) == ("answe", 2, "stop")
    # A row without a stop string runs to max_new_tokens although its batch neighbours stopped.
    assert (out[1].text, out[1].completion_tokens, out[1].finish_reason) == ("ox" * 8, 8, "length")
    # The prompt's last "7" plus the first generated "7" is not a stop: only the answer counts (as in vLLM).
    assert (out[2].text, out[2].completion_tokens, out[2].finish_reason) == ("", 2, "stop")


def test_end_of_turn_token_counts_as_generated_and_padding_does_not(tiny_model):
    model, tok = tiny_model
    gen = TransformersGenerator(model, tok)
    answer = tok("router refund", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id  # also the pad token of the tiny tokenizer
    ended = gen._to_generation(answer + [eos, eos, eos], 9, (), 0.1)
    assert (ended.text, ended.completion_tokens, ended.finish_reason) == ("router refund", len(answer) + 1, "stop")
    cut = gen._to_generation(answer + [eos, eos], 9, (" ref",), 0.1)
    assert (cut.text, cut.finish_reason) == ("router", "stop") and cut.completion_tokens < len(answer)
    full = gen._to_generation(answer, 9, (), 0.1)
    assert (full.completion_tokens, full.finish_reason) == (len(answer), "length")


def test_seeded_sampling_repeats_and_stop_strings_are_validated(tiny_model):
    model, tok = tiny_model
    gen = TransformersGenerator(model, tok, batch_size=2)
    prompts = list(RAW_PROMPTS)[:3]
    sample = GenerationParams(max_new_tokens=6, temperature=1.0, seed=3)
    first, again = gen.generate(prompts, sample), gen.generate(prompts, sample)
    assert [g.text for g in first] == [g.text for g in again]
    greedy = gen.generate(prompts, GenerationParams(max_new_tokens=6))
    assert [g.text for g in first] != [g.text for g in greedy]
    with pytest.raises(ValueError, match="non-empty"):
        GenerationParams(max_new_tokens=4, stop=("",))
    assert GenerationParams(max_new_tokens=4, stop=["x"]).stop == ("x",)  # lists from a config become a hashable tuple


def test_generate_answers_records_reference_and_answer(tiny_model):
    model, tok = tiny_model
    rows = [example(i, f"q{i}", f"a{i}") for i in range(3)]
    records = generate_answers(TransformersGenerator(model, tok), tok, rows, GenerationParams(max_new_tokens=3), "m")
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert [r["reference"] for r in records] == ["a0", "a1", "a2"]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in records)


def test_template_mismatch_is_refused(tiny_model_dir, tmp_path):
    model, tok = load_causal_lm(str(tiny_model_dir))
    meta = {"epoch": 1, "method": "full", "template_fingerprint": "0000000000000000"}
    ckpt = save_checkpoint(model, tok, tmp_path / "epoch-1", meta)
    with pytest.raises(TemplateError, match="chat template mismatch"):
        load_finetuned(str(tiny_model_dir), ckpt)
    with pytest.raises(TemplateError):
        check_template(tok, "ffff", ckpt)


class FakeLLM:
    """Stands in for vllm.LLM: records what it was asked and answers like vLLM's RequestOutput."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling, lora_request=None):
        self.calls.append((prompts, sampling, lora_request))
        return [SimpleNamespace(prompt_token_ids=[1] * len(p),
                                outputs=[SimpleNamespace(text=f" echo:{p} ", token_ids=[1, 2, 3],
                                                         finish_reason="length" if "long" in p else "stop")])
                for p in prompts]


def test_vllm_backend_maps_outputs_and_passes_the_adapter(monkeypatch):
    captured = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            captured["sampling"] = kwargs

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.lora_id, self.path = name, lora_id, path

    fake_vllm = SimpleNamespace(SamplingParams=SamplingParams)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.lora.request", SimpleNamespace(LoRARequest=LoRARequest))
    llm = FakeLLM()
    gen = VLLMGenerator("base", adapter="/ckpt/epoch-2", llm=llm)
    out = gen.generate(["short", "long one"], GenerationParams(max_new_tokens=7))
    assert [g.text for g in out] == ["echo:short", "echo:long one"]
    assert [g.finish_reason for g in out] == ["stop", "length"]
    assert captured["sampling"]["max_tokens"] == 7 and captured["sampling"]["temperature"] == 0.0
    assert llm.calls[0][2].path == "/ckpt/epoch-2"


@pytest.mark.gpu
def test_vllm_backend_on_a_real_gpu(tiny_model_dir):
    gen = VLLMGenerator(str(tiny_model_dir))
    out = gen.generate(["hello"], GenerationParams(max_new_tokens=4))
    assert len(out) == 1 and out[0].completion_tokens <= 4
    gen.close()


def test_vllm_backend_passes_stop_strings_token_ids_and_frees_the_engine(monkeypatch, tiny_model):
    _, tok = tiny_model
    captured = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            captured.update(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=SamplingParams))
    monkeypatch.setitem(sys.modules, "vllm.lora", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.lora.request", SimpleNamespace(LoRARequest=None))
    llm = FakeLLM()
    shutdowns = []
    llm.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: shutdowns.append(1)))
    gen = VLLMGenerator("base", llm=llm, tokenizer=tok)
    gen.generate(["billing 7"], GenerationParams(max_new_tokens=3, temperature=0.7, seed=5, stop=("\n\n", "}")))
    assert captured == {"max_tokens": 3, "temperature": 0.7, "seed": 5, "stop": ["\n\n", "}"]}
    # Token ids encoded without special tokens, exactly as the transformers backend sees the prompt.
    assert llm.calls[0][0] == [{"prompt_token_ids": tok("billing 7", add_special_tokens=False)["input_ids"]}]
    assert llm.calls[0][2] is None  # no adapter, no LoRARequest
    gen.close()
    assert shutdowns == [1] and gen.llm is None
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate(["x"], GenerationParams(max_new_tokens=4))


def _fake_lora_checkpoint(tok, path: Path, rank: int) -> Path:
    tok.save_pretrained(path)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (path / CHECKPOINT_META).write_text(json.dumps({"epoch": 1, "method": "lora",
                                                    "template_fingerprint": template_fingerprint(tok)}))
    return path


def test_make_generator_builds_vllm_with_lora_rank_from_the_adapter(monkeypatch, tiny_model, tmp_path):
    _, tok = tiny_model
    engines = []

    class LLM:
        def __init__(self, **kwargs):
            engines.append(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM))
    ckpt = _fake_lora_checkpoint(tok, tmp_path / "epoch-1", rank=12)
    engine = Engine(backend="vllm", precision="fp32", batch_size=4, trust_remote_code=False, tensor_parallel_size=2,
                    gpu_memory_utilization=0.5)
    gen, _ = make_generator(engine, "/models/base", ckpt)
    assert gen.adapter == str(ckpt)
    assert engines == [{"model": "/models/base", "tensor_parallel_size": 2, "dtype": "float32",
                        "gpu_memory_utilization": 0.5, "enable_lora": True, "max_lora_rank": 16}]
    meta = json.loads((ckpt / CHECKPOINT_META).read_text()) | {"template_fingerprint": "0000"}
    (ckpt / CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(TemplateError, match="chat template mismatch"):
        checkpoint_tokenizer(ckpt)


def answering(fingerprint, generator):
    return AnsweringModel(fingerprint=fingerprint, label="m", generator=generator)


class CountingGenerator:
    """Wraps a real generator and records every prompt it was asked to answer."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        return self.inner.generate(prompts, params)


def test_resume_after_a_partial_file_generates_only_what_is_missing(tiny_model, tiny_model_dir, tmp_path):
    model, tok = tiny_model
    rows = [example(i, f"question {i} " + "x" * (5 - i)) for i in range(5)]
    prompts = prompts_for(tok, rows)
    params = GenerationParams(max_new_tokens=3)
    fp = model_fingerprint(str(tiny_model_dir), template=template_fingerprint(tok), engine="test")
    path = tmp_path / files.GENERATIONS
    first = CountingGenerator(TransformersGenerator(model, tok, batch_size=2))
    generate_cached(rows[:2], prompts[:2], params, path, answering(fp, first))
    before = read_jsonl(path)
    with path.open("a") as handle:  # a crash in the middle of writing the third line
        handle.write('{"key": "3f2a", "text": "half an ans')

    retry = CountingGenerator(TransformersGenerator(model, tok, batch_size=2))
    result = generate_cached(rows, prompts, params, path, answering(fp, retry), chunk_size=2)
    assert sorted(retry.prompts) == sorted(prompts[2:])
    assert (result.generated, result.reused, result.dropped_lines) == (3, 2, 1)
    final = read_jsonl(path)  # parses: no truncated line is left behind
    assert [r["id"] for r in final] == ["0", "1", "2", "3", "4"]
    assert final[:2] == before
    assert all(r["model_fingerprint"] == fp and r["params"]["max_new_tokens"] == 3 for r in final)

    again = CountingGenerator(TransformersGenerator(model, tok))
    assert generate_cached(rows, prompts, params, path, answering(fp, again)).generated == 0 and again.prompts == []
    other = CountingGenerator(TransformersGenerator(model, tok))
    generate_cached(rows, prompts, GenerationParams(max_new_tokens=4), path, answering(fp, other))
    assert len(other.prompts) == 5  # other params: nothing cached applies
    assert [r["params"]["max_new_tokens"] for r in read_jsonl(path)] == [4] * 5


def test_generation_cache_ignores_lines_that_are_not_records(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"key": "a", "text": "x"}\nnot json\n[1, 2]\n\n{"key": "b", "text": "y"}\n')
    cache = GenerationCache(path).load()
    assert set(cache.records) == {"a", "b"} and cache.dropped_lines == 2


def test_model_fingerprint_follows_weight_content(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "epoch-1"
    for d, weights in ((base, b"base"), (adapter, b"lora-1")):
        d.mkdir()
        (d / "model.safetensors" if d == base else d / "adapter_model.safetensors").write_bytes(weights)
    (adapter / CHECKPOINT_META).write_text(json.dumps({"method": "lora", "template_fingerprint": "t1"}))
    first = model_fingerprint(str(base), adapter)
    assert model_fingerprint(str(base), adapter) == first
    assert model_fingerprint(str(base), adapter, engine="vllm/auto") != first
    (adapter / "adapter_model.safetensors").write_bytes(b"lora-2")
    second = model_fingerprint(str(base), adapter)
    assert second != first
    (base / "model.safetensors").write_bytes(b"base-changed")
    assert model_fingerprint(str(base), adapter) != second  # a LoRA answer depends on the base weights too
    (adapter / CHECKPOINT_META).write_text(json.dumps({"method": "full", "template_fingerprint": "t1"}))
    full = model_fingerprint(str(base), adapter)
    (base / "model.safetensors").write_bytes(b"base-changed-again")
    assert model_fingerprint(str(base), adapter) == full  # full weights stand alone


def test_champion_answers_are_reused_only_for_the_same_prompt_and_params(tmp_path):
    from sftjudge.judge.stage import champion_answers
    from sftjudge.run.io import write_jsonl

    params = GenerationParams(max_new_tokens=2).to_json()
    champion = tmp_path / "champion-run"
    write_jsonl(champion / files.GENERATIONS, [
        {"id": "a", "prompt": "p-a", "params": params, "text": "champ a"},
        {"id": "b", "prompt": "p-b (old template)", "params": params, "text": "champ b"},
        {"id": "c", "prompt": "p-c", "params": GenerationParams(max_new_tokens=9).to_json(), "text": "champ c"}])
    mine = [{"id": i, "prompt": f"p-{i}", "params": params} for i in ("a", "b", "c", "d")]
    assert champion_answers(str(champion), mine) == {"a": "champ a"}
    assert champion_answers(None, mine) == {}


def test_baseline_is_generated_once_per_dataset_and_params(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    model, tok = tiny_model
    rows = [example(i, f"q{i}") for i in range(3)]
    params = GenerationParams(max_new_tokens=2)
    counting = CountingGenerator(TransformersGenerator(model, tok))
    engine = Engine(backend="transformers", precision="auto", batch_size=8, trust_remote_code=False,
                    tensor_parallel_size=1, gpu_memory_utilization=0.85)
    base = UntunedModel(path=str(tiny_model_dir), tokenizer=tok, generator=counting, engine=engine.id)
    first = generate_baseline(base, rows, params, tmp_path)
    assert first.generated == 3 and len(counting.prompts) == 3
    [path] = (tmp_path / "baselines").glob("*.jsonl")
    assert [r["id"] for r in read_jsonl(path)] == ["0", "1", "2"] and first.records[0]["model"] == "base:tiny"

    import sftjudge.generate.loading

    def no_model(*args, **kwargs):
        raise AssertionError("a fully cached baseline must not load the model")

    monkeypatch.setattr(sftjudge.generate.loading, "make_generator", no_model)
    again = generate_baseline(UntunedModel.load(str(tiny_model_dir), engine), rows, params, tmp_path)  # lazy model
    assert (again.generated, again.reused) == (0, 3) and again.records == first.records
    more = CountingGenerator(TransformersGenerator(model, tok))
    generate_baseline(UntunedModel(path=str(tiny_model_dir), tokenizer=tok, generator=more, engine=engine.id),
                      rows + [example(3, "q3")], params, tmp_path)
    assert len(more.prompts) == 4  # another test split is another baseline file
    assert len(list((tmp_path / "baselines").glob("*.jsonl"))) == 2


def test_lazy_generator_builds_on_first_use_and_closes(tiny_model):
    built = []
    lazy = LazyGenerator(lambda: built.append(1) or SimpleNamespace(
        generate=lambda prompts, params: ["ok"] * len(prompts), close=lambda: built.append("closed")))
    lazy.close()
    assert built == []
    params = GenerationParams(max_new_tokens=4)
    assert lazy.generate(["a"], params) == ["ok"] and lazy.generate(["b"], params)
    lazy.close()
    assert built == [1, "closed"]


def test_a_retried_generate_stage_generates_only_what_is_missing(tiny_model, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    import sftjudge.generate.engines
    from sftjudge.config import GenerateConfig, RegressionConfig, RunConfig, SFTConfig
    from sftjudge.generate.stage import generate_stage
    from sftjudge.run.directory import RunDir
    from sftjudge.run.io import write_jsonl

    model, tok = tiny_model
    run = RunDir.create(tmp_path / "runs", "name: t\n", "t", run_id="r1")
    rows = [example(i, f"q{i} " + "y" * i) for i in range(5)]
    write_jsonl(run / files.TEST, [r.to_json() for r in rows])
    meta = {"epoch": 1, "method": "full", "template_fingerprint": template_fingerprint(tok)}
    ckpt = save_checkpoint(model, tok, run / files.CHECKPOINTS / "epoch-1", meta)
    (run / files.SFT_SUMMARY).write_text(json.dumps({"best_checkpoint": str(ckpt), "best_epoch": 1}))
    config = RunConfig(generate=GenerateConfig(max_new_tokens=2, batch_size=2),
                       sft=SFTConfig(base_model=str(tiny_model_dir)), regression=RegressionConfig(enabled=False))
    assert generate_stage(str(run.path), config)["counts"]["generated"] == 5

    lines = (run / files.GENERATIONS).read_text().splitlines(keepends=True)
    (run / files.GENERATIONS).write_text("".join(lines[:2]) + lines[2][:20])  # killed while writing
    run._set_stage("generate", {"status": "failed"})
    built = []
    real = sftjudge.generate.engines.make_generator
    monkeypatch.setattr(sftjudge.generate.engines, "make_generator",
                        lambda *a, **k: built.append(CountingGenerator(real(*a, **k)[0])) or (built[-1], None))
    counts = generate_stage(str(run.path), config)["counts"]
    assert (counts["generated"], counts["reused"], counts["cache_dropped_lines"]) == (3, 2, 1)
    assert len(built[0].prompts) == 3
    assert [r["id"] for r in read_jsonl(run / files.GENERATIONS)] == [r.id for r in rows]

    run._set_stage("generate", {"status": "failed"})
    monkeypatch.setattr(sftjudge.generate.engines, "make_generator", lambda *a, **k: pytest.fail("model loaded"))
    assert generate_stage(str(run.path), config)["counts"]["generated"] == 0
