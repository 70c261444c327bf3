"""The judge model, loaded once per stage and used with any judge definition (score or choice)."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
from pathlib import Path
from typing import Any

from sftjudge.config import JUDGE_REPLY_TOKENS, JudgeConfig, RunConfig
from sftjudge.judge import fit
from sftjudge.judge.prefix import PrefixStore
from sftjudge.judge.spec import JudgeSpec, judge_identity
from sftjudge.run import files

TOP_LOGPROBS = 20  # log-probabilities per position a vLLM judge asks for (vLLM's default max_logprobs)


def served_client(judge: JudgeConfig):
    """The client for judge.backend=openai."""
    from sftjudge.runtime.served_client import ServedClient

    served = judge.openai
    return ServedClient(base_url=served.base_url, model=served.model, api_key_env=served.api_key_env,
                        concurrency=served.concurrency, max_retries=served.max_retries, timeout_s=served.timeout_s)


def served_fingerprint(client) -> str:
    """What identifies a served judge: the server's description of the model (vLLM: the path it loaded and its
    context length). Weights cannot be hashed over the wire: the same name serving other weights would share an
    identity, so keep served model names meaningful."""
    entry = client.served_model()
    described = {key: entry.get(key) for key in ("id", "root", "max_model_len", "owned_by")}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


class LoadedJudge:
    """The judge model loaded once for the stage and used with any judge definition (score or choice).

    Loaded in `judge.precision` (bf16 where it is fast: a float32 copy of a 1.5B judge alone is 6.7 GB). One scorer
    per definition is built and kept: in text mode with vLLM each scorer would start an engine of its own. With
    judge.backend=openai nothing is loaded but the tokenizer (to fit prompts): a server does the judging. With
    judge.backend=vllm (vllm.engine: server) that server is a `vllm serve` of the judge model in vLLM's own
    environment, started on the first judgment the stage's cache misses and stopped by `close`; its output goes
    to `log`.
    """

    def __init__(self, config: RunConfig, home: Path, log: Path | None = None):
        from transformers import AutoTokenizer

        from sftjudge.models.chat import template_fingerprint
        from sftjudge.models.embedded import resolve_model
        from sftjudge.models.fingerprint import engine_id, model_fingerprint
        from sftjudge.models.loading import with_pad
        from sftjudge.runtime.device import compute_dtype

        self.config = config.judge
        self.run_config = config
        self.vllm = config.vllm
        self.vllm_kwargs = {"tensor_parallel_size": config.generate.tensor_parallel_size,
                            "gpu_memory_utilization": config.generate.gpu_memory_utilization}
        self.log = log or Path(home) / files.VLLM_JUDGE_LOG
        self.path = resolve_model(self.config.model, home)
        self.dtype = compute_dtype(self.config.precision)
        self.tokenizer = with_pad(AutoTokenizer.from_pretrained(self.path))
        in_engine = self.config.backend == "vllm"
        self.vllm_server = in_engine and self.vllm.engine == "server"
        self.served = self.config.backend == "openai" or self.vllm_server
        self._client = served_client(self.config) if self.config.backend == "openai" else None
        self._server = None  # the started `vllm serve` (vllm_server)
        # Weights, chat template and dtype: the same definition on another model or dtype scores differently.
        self.fingerprint = (served_fingerprint(self._client) if self._client is not None else
                            model_fingerprint(self.path, template=template_fingerprint(self.tokenizer),
                                              engine=engine_id(self.config.backend, self.config.precision)))
        self._model = None
        self._engine = None  # backend vllm: one engine for every definition, logprob and text alike
        self._scorers: dict[str, object] = {}
        self._budget_by_name: dict[str, int] = {}  # definition -> the prompt tokens its scorer fits prompts to
        # One store for every in-process logprob scorer of the stage: keys are exact token ids, so definitions
        # never mix. vLLM keeps its own prefix cache.
        self.prefixes = (PrefixStore(self.config.prefix_cache_mb * 2**20)
                         if self.config.prefix_cache_mb and not in_engine else None)

    @property
    def model(self):
        """The weights, loaded on first use (an identity alone needs only the tokenizer and the weights' hash)."""
        if self._model is None:
            import torch

            from sftjudge.models.loading import load_causal_lm
            from sftjudge.runtime.device import device

            model, _ = load_causal_lm(self.path, dtype_name=self.dtype)
            self._model = model.to(device=device(), dtype=getattr(torch, self.dtype))
        return self._model

    @property
    def engine(self):
        """The judge's vLLM engine (backend vllm), started on first use; its `llm` scores logprob judges."""
        if self._engine is None:
            from sftjudge.generate.backends import VLLMGenerator
            from sftjudge.models.fingerprint import VLLM_DTYPE

            self._engine = VLLMGenerator(self.path, tokenizer=self.tokenizer, engine_kwargs=self.vllm_kwargs | {
                "dtype": VLLM_DTYPE[self.config.precision], "max_logprobs": TOP_LOGPROBS,
                "max_model_len": self.context_tokens})
        return self._engine

    @property
    def client(self):
        """The served judge's client; for vllm_server the server is started here, on first use."""
        if self._client is None and self.vllm_server:
            self._client = self._start_server()
        return self._client

    def _start_server(self):
        from sftjudge.models.fingerprint import VLLM_DTYPE
        from sftjudge.runtime.served_client import ServedClient
        from sftjudge.runtime.vllm_server import ServeSettings, start_server, vllm_python

        settings = ServeSettings(name="judge", dtype=VLLM_DTYPE[self.config.precision],
                                 max_model_len=self.context_tokens, startup_s=self.vllm.startup_s,
                                 enforce_eager=self.vllm.enforce_eager,
                                 max_logprobs=TOP_LOGPROBS, **self.vllm_kwargs)
        self._server = start_server(vllm_python(self.vllm.python), self.path, settings, self.log)
        return ServedClient(base_url=self._server.url, model="judge", concurrency=self.vllm.concurrency,
                            timeout_s=600, service="vLLM judge server", setting=f"the server's log {self.log}")

    @property
    def params(self) -> int | None:
        """The judge's parameter count; None for a served judge (the server does not say). With vLLM it is read
        from config.json (plan/shape.py): loading a transformers copy to count would double the judge's memory."""
        if self.config.backend == "openai":
            return None
        if self.config.backend == "vllm":
            from sftjudge.plan.shape import model_shape

            return model_shape(self.path, None).params
        return sum(p.numel() for p in self.model.parameters())

    @functools.cached_property
    def window(self) -> int | None:
        """The judge model's context window (tokens), from its config; None for a served judge (the server keeps
        its own limit)."""
        if self.config.backend == "openai":
            return None
        from transformers import AutoConfig

        settings = AutoConfig.from_pretrained(self.path)
        return getattr(settings, "max_position_embeddings", None)

    @property
    def context_tokens(self) -> int:
        """The longest judge sequence a vLLM engine or server of this judge is sized for."""
        return min(self.run_config.judge_context_tokens, self.window or self.run_config.judge_context_tokens)

    def prompt_budget(self, spec: JudgeSpec) -> int:
        """Tokens a prompt of `spec` may take (judge.max_prompt_tokens; for 'auto' sized from the definition's own
        text and the run's longest question, reference and answer(s), within the judge's context)."""
        if self.config.max_prompt_tokens != "auto":
            return self.config.max_prompt_tokens
        answers = sum(1 for name in spec.inputs if name.startswith("answer"))
        empty = {name: "" for name in spec.inputs}
        text = self.tokenizer.apply_chat_template(spec.render_messages(empty), tokenize=False,
                                                  add_generation_prompt=True) + spec.answer_prefix
        template = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + fit.MARKER_TOKENS
        budget = self.run_config.judge_prompt_tokens(template, max(answers, 1))
        return min(budget, self.context_tokens - JUDGE_REPLY_TOKENS) if self.served or self.window else budget

    def budgets(self) -> dict[str, Any]:
        """How prompts were fitted, for metrics.json and the report: the setting, and the tokens each definition
        scored so far could take."""
        return {"setting": self.config.max_prompt_tokens, "context_window": self.window,
                "tokens": {name: budget for name, budget in sorted(self._budget_by_name.items())}}

    def mode(self, spec: JudgeSpec) -> str:
        return spec.mode if self.config.mode == "auto" else self.config.mode

    def identity(self, spec: JudgeSpec) -> str:
        """This judge's identity under `spec` (see `judge_identity`)."""
        if self.config.backend == "openai":
            return judge_identity(spec, f"{self.mode(spec)}/openai", self.config.openai.model, self.fingerprint)
        # A served vLLM judge reads labels by token text through the chat endpoint; in the engine, by token id.
        backend = "vllm-server" if self.vllm_server else self.config.backend
        return judge_identity(spec, f"{self.mode(spec)}/{backend}", self.config.model, self.fingerprint)

    def scorer(self, spec: JudgeSpec):
        """The scorer for `spec` (logprob or text mode), built on first use and reused."""
        key = self.identity(spec)
        if key not in self._scorers:
            budget = self._budget_by_name[spec.name] = self.prompt_budget(spec)
            self._scorers[key] = self._build_scorer(spec, budget)
        return self._scorers[key]

    def _build_scorer(self, spec: JudgeSpec, budget: int):
        if self.served:
            return self._served_scorer(spec, budget)
        if self.mode(spec) == "text":
            from sftjudge.generate.backends import TransformersGenerator
            from sftjudge.judge.text import TextJudge

            generator = (self.engine if self.config.backend == "vllm"
                         else TransformersGenerator(self.model, self.tokenizer, batch_size=self.config.batch_size))
            return TextJudge(generator, self.tokenizer, spec, max_prompt_tokens=budget)
        if self.config.backend == "vllm":
            from sftjudge.judge.engine import EngineLogprobJudge, EngineRubricJudge

            kind = EngineRubricJudge if spec.kind == "rubric" else EngineLogprobJudge
            return kind(self.engine.llm, self.tokenizer, spec, max_prompt_tokens=budget,
                        top_logprobs=TOP_LOGPROBS)
        if spec.kind == "rubric":
            from sftjudge.judge.rubric import RubricJudge

            return RubricJudge(self.model, self.tokenizer, spec, max_prompt_tokens=budget,
                               prefixes=self.prefixes)
        from sftjudge.judge.logprob import LogprobJudge

        return LogprobJudge(self.model, self.tokenizer, spec, max_prompt_tokens=budget,
                            prefixes=self.prefixes)

    def _served_scorer(self, spec: JudgeSpec, budget: int):
        from sftjudge.judge.served import ServedChat, ServedLogprobJudge, ServedRubricJudge
        from sftjudge.judge.text import TextJudge

        if self.mode(spec) == "text":
            return TextJudge(ServedChat(self.client), self.tokenizer, spec,
                             max_prompt_tokens=budget)
        kind = ServedRubricJudge if spec.kind == "rubric" else ServedLogprobJudge
        if self.vllm_server:  # our own vLLM server: prefill works, and it was started with TOP_LOGPROBS
            return kind(self.client, self.tokenizer, spec, max_prompt_tokens=budget,
                        prefill=True, top_logprobs=TOP_LOGPROBS)
        return kind(self.client, self.tokenizer, spec, max_prompt_tokens=budget,
                    prefill=self.config.openai.prefill, top_logprobs=self.config.openai.top_logprobs)

    def close(self) -> None:
        """Shut every engine down and drop the weights, so the next stage finds the memory free."""
        for scorer in self._scorers.values():
            if hasattr(getattr(scorer, "generator", None), "close"):
                scorer.generator.close()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._scorers.clear()
        self.prefixes = None
        client, self._client = self._client, None
        if client is not None:
            client.close()
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self._model = None
        gc.collect()
