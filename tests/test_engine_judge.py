"""judge.backend: vllm — logprob judges scored inside the vLLM engine, text judges on the same engine, no
transformers copy of the judge beside it, and the engine shut down when the stage ends.

vLLM is replaced by a stand-in that answers as vllm.LLM does (greedy tokens, top-k log-probabilities by token id)
with the real tiny model's numbers, so engine scores can be compared with in-process scores exactly."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sftjudge.config import RunConfig
from sftjudge.judge.engine import EngineLogprobJudge, EngineRubricJudge
from sftjudge.judge.logprob import LogprobJudge
from sftjudge.judge.rubric import RubricJudge
from sftjudge.judge.spec import load_judge

REPO = Path(__file__).resolve().parent.parent
ITEMS = [{"id": f"i{n}", "instruction": question, "reference": reference, "answer": answer}
         for n, (question, reference, answer) in enumerate([
             ("Which port?", "Port 8443.", "Port 8443."), ("Which port?", "Port 8443.", ""),
             ("Extract the ticket as JSON", '{"intent": "billing"}', '{"intent": "refund"}'),
             ("Name the capital of France.", "Paris", "I like trains " * 20)])]


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.kwargs = kwargs


class FakeLLM:
    """Stands in for vllm.LLM: greedy decoding and each position's top `logprobs` log-probabilities by token id,
    computed by the real (tiny) model; records what it was built with and asked."""

    built: list[dict] = []

    def __init__(self, model, **kwargs):
        from sftjudge.models.loading import load_causal_lm

        FakeLLM.built.append({"model": model, **kwargs})
        self.model, self.tokenizer = load_causal_lm(model)
        self.calls: list[tuple[int, dict]] = []
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: FakeLLM.built.append("shut")))

    def generate(self, inputs, sampling, lora_request=None, use_tqdm=True):
        import torch

        self.calls.append((len(inputs), sampling.kwargs))
        outputs = []
        for request in inputs:
            ids, positions, chosen = list(request["prompt_token_ids"]), [], []
            for _ in range(sampling.max_tokens):
                with torch.no_grad():
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                if getattr(sampling, "logprobs", None):
                    top = torch.topk(logp, min(sampling.logprobs, logp.numel()))
                    positions.append({int(i): SimpleNamespace(logprob=float(v))
                                      for v, i in zip(top.values, top.indices)})
                chosen.append(int(logp.argmax()))
                ids.append(chosen[-1])
            text = self.tokenizer.decode(chosen)
            outputs.append(SimpleNamespace(prompt_token_ids=request["prompt_token_ids"], outputs=[SimpleNamespace(
                token_ids=chosen, logprobs=positions or None, text=text, finish_reason="length")]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.built = []
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FakeLLM, SamplingParams=SamplingParams))
    monkeypatch.setitem(sys.modules, "vllm.lora", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.lora.request", SimpleNamespace(LoRARequest=None))
    return FakeLLM


def judge(name):
    return load_judge(REPO / "judges", name)


@pytest.mark.model
def test_engine_scores_equal_in_process_scores_when_every_label_is_returned(fake_vllm, tiny_model, tiny_model_dir):
    model, tok = tiny_model
    llm = FakeLLM(str(tiny_model_dir))
    vocab = model.config.vocab_size  # every token's log-probability: no label can fall outside
    for name, local, engine in (("reference-score", LogprobJudge, EngineLogprobJudge),
                                ("rubric", RubricJudge, EngineRubricJudge)):
        want = local(model, tok, judge(name), max_prompt_tokens=400).score(ITEMS, batch_size=2)
        got = engine(llm, tok, judge(name), max_prompt_tokens=400, top_logprobs=vocab).score(ITEMS)
        for a, b in zip(want, got):
            assert b.score == pytest.approx(a.score, abs=1e-4), (name, a.id)
            assert b.label_mass == pytest.approx(a.label_mass, abs=1e-4), (name, a.id)
            assert b.truncated == a.truncated and b.prompt_tokens == a.prompt_tokens
            for dim, value in a.dimensions.items():
                assert b.dimensions[dim] == pytest.approx(value, abs=1e-4), (a.id, dim)
    pairs = [{"id": "p", "instruction": "Which port?", "reference": "Port 8443.", "answer_a": "8443",
              "answer_b": "no idea"}]
    want = LogprobJudge(model, tok, judge("pairwise")).score(pairs)[0]
    got = EngineLogprobJudge(llm, tok, judge("pairwise"), top_logprobs=vocab).score(pairs)[0]
    assert got.choice == want.choice
    assert got.distribution == pytest.approx(want.distribution, abs=1e-4)


@pytest.mark.model
def test_with_the_top_20_a_label_outside_counts_zero_and_no_label_is_unparseable(fake_vllm, tiny_model,
                                                                                  tiny_model_dir):
    model, tok = tiny_model
    llm = FakeLLM(str(tiny_model_dir))
    full = EngineLogprobJudge(llm, tok, judge("reference-score"), top_logprobs=model.config.vocab_size).score(ITEMS)
    top = EngineLogprobJudge(llm, tok, judge("reference-score"), top_logprobs=20).score(ITEMS)
    for a, b in zip(full, top):
        assert (b.label_mass or 0.0) <= a.label_mass + 1e-9  # a lower bound on the label mass
    few = EngineLogprobJudge(llm, tok, judge("reference-score"), top_logprobs=1)
    few.labels = few.labels.__class__(single={"9": 398}, double={})  # a label the random model never ranks first
    judged = few.score(ITEMS[:1])[0]
    assert judged.score is None and "none of the labels" in judged.unparseable


@pytest.mark.model
def test_the_vllm_backend_runs_every_judge_on_one_engine_and_loads_no_transformers_copy(fake_vllm, tiny_model,
                                                                                        sftjudge_home):
    from sftjudge.judge.model import LoadedJudge

    config = RunConfig.model_validate({"judge": {"model": "tiny", "backend": "vllm", "precision": "fp32"},
                                       "vllm": {"engine": "in_process"}})
    loaded = LoadedJudge(config, sftjudge_home)
    pointwise = loaded.scorer(judge("reference-score")).score(ITEMS)
    rubric = loaded.scorer(judge("rubric")).score(ITEMS)
    text_spec = judge("reference-score").model_copy(update={"mode": "text"})
    text_config = config.model_copy(update={"judge": config.judge.model_copy(update={"mode": "text"})})
    loaded.config = text_config.judge
    text = loaded.scorer(text_spec).score(ITEMS[:1])
    assert all(j.label_mass is not None for j in pointwise) and all(j.dimensions for j in rubric)
    assert text[0].score is not None or text[0].unparseable  # a reading or a reason, never a guess
    assert loaded.params > 0  # from config.json
    assert loaded._model is None, "a transformers copy of the judge was loaded beside the engine"
    engines = [b for b in FakeLLM.built if isinstance(b, dict)]
    assert len(engines) == 1 and engines[0]["max_logprobs"] == 20 and engines[0]["dtype"] == "float32"
    in_process = LoadedJudge(config.model_copy(update={"judge": config.judge.model_copy(
        update={"backend": "transformers"})}), sftjudge_home)
    loaded.config = config.judge  # logprob mode again
    # engine scores are other numbers than in-process ones: a later run compares only with the same engine's
    assert loaded.identity(judge("reference-score")) != in_process.identity(judge("reference-score"))
    loaded.close()
    assert FakeLLM.built[-1] == "shut"  # the engine is shut down: the next stage finds the memory free
