"""Answers from a vLLM server (generate.backend=vllm with vllm.engine=server): the student and the base model.

One server per generate stage, started on the first missing answer and stopped when the stage ends: the base
model, with a LoRA checkpoint as the adapter named "student", so the base model's answers (baseline, regression
suite) come from the same engine with no adapter - one cold start instead of three. A full checkpoint is served
alone, and the base model gets a server of its own only if one of its answers is missing. With vllm.base_url a
long-lived server (sidecar) answers instead, the adapter loaded into it at runtime by name and unloaded after.

Prompts travel as token ids encoded exactly as the transformers backend encodes them (no special tokens added:
the template has them), one request per prompt; vLLM batches the requests in flight itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.errors import ModelError
from sftjudge.generate.backends import Engine, Generation, GenerationParams
from sftjudge.generate.loading import max_lora_rank
from sftjudge.models.fingerprint import VLLM_DTYPE
from sftjudge.runtime.served_client import ServedClient

STUDENT, BASE = "student", "base"  # model names on a server the stage started


class ServedGenerator:
    """A `Generator` over one model name of a server; `connect()` gives the client, starting the server on the first
    call (a fully cached stage starts none). `stop`, if given, stops the server when this generator is closed."""

    def __init__(self, connect: Callable[[], ServedClient], model: Callable[[], str], tokenizer,
                 stop: Callable[[], None] | None = None):
        self.connect, self.model, self.tokenizer, self.stop = connect, model, tokenizer, stop

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        """One Generation per prompt, in order; stop strings are cut by the server (not included in the text)."""
        client, model = self.connect(), self.model()

        def one(prompt: str) -> Generation:
            body: dict[str, Any] = {"model": model, "max_tokens": params.max_new_tokens,
                                    "temperature": params.temperature,
                                    "prompt": self.tokenizer(prompt, add_special_tokens=False)["input_ids"]}
            if params.temperature > 0:
                body["seed"] = params.seed
            if params.stop:
                body["stop"] = list(params.stop)
            started = time.monotonic()
            reply = client.request("POST", "/completions", body)
            try:
                choice, usage = reply["choices"][0], reply["usage"]
                return Generation(text=choice["text"].strip(), prompt_tokens=int(usage["prompt_tokens"]),
                                  completion_tokens=int(usage["completion_tokens"]),
                                  finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                                  seconds=time.monotonic() - started)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ModelError(f"vLLM server {client.base_url}: a completion reply without text or token counts "
                                 f"({type(exc).__name__}: {exc}): {str(reply)[:200]}") from exc

        return client.map(one, prompts)

    def close(self) -> None:
        if self.stop is not None:
            self.stop()


class StudentServer:
    """The generate stage's vLLM server for one set of weights (and optionally a LoRA adapter), started on first use.

    `weights`: the base model folder (with `adapter`, a LoRA checkpoint served as "student") or a full checkpoint.
    With vllm.base_url the sidecar is used instead and the adapter is loaded into it by a name unique to the
    checkpoint. `close()` stops a started server (or unloads the adapter from the sidecar).
    """

    def __init__(self, config: RunConfig, engine: Engine, weights: str, adapter: Path | None, log: Path):
        self.config, self.engine, self.weights, self.adapter, self.log = config, engine, weights, adapter, log
        self.client: ServedClient | None = None
        self.server = None
        self.names: dict[str, str] = {}  # STUDENT/BASE -> the name the server knows it by

    def connect(self) -> ServedClient:
        if self.client is None:
            vllm = self.config.vllm
            url = vllm.base_url or self._start()
            self.client = ServedClient(base_url=url, model=BASE, concurrency=vllm.concurrency, timeout_s=600,
                                       service="vLLM server", setting="vllm.base_url")
            if vllm.base_url:
                self._use_sidecar()
        return self.client

    def name(self, role: str) -> Callable[[], str]:
        """The server's name for the student or the base model (known once connected)."""
        return lambda: self.names[role]

    def _start(self) -> str:
        from sftjudge.runtime.vllm_server import ServeSettings, start_server, vllm_python

        engine = self.engine
        settings = ServeSettings(
            name=BASE, dtype=VLLM_DTYPE[engine.precision], max_model_len=engine.max_model_len or 4096,
            startup_s=self.config.vllm.startup_s, gpu_memory_utilization=engine.gpu_memory_utilization,
            tensor_parallel_size=engine.tensor_parallel_size,
            enforce_eager=self.config.vllm.enforce_eager,
            lora_modules=((STUDENT, str(self.adapter)),) if self.adapter else (),
            max_lora_rank=max_lora_rank(self.adapter) if self.adapter else None)
        self.server = start_server(vllm_python(self.config.vllm.python), self.weights, settings, self.log)
        self.names = {BASE: BASE, STUDENT: STUDENT if self.adapter else BASE}
        return self.server.url

    def _use_sidecar(self) -> None:
        """Name the sidecar's base model and load the adapter into it unless it is there already."""
        listed = self.client.request("GET", "/models").get("data") or []
        bases = [e["id"] for e in listed if not e.get("parent")]
        if not bases:
            raise ModelError(f"vLLM server {self.config.vllm.base_url} lists no model; is it a vLLM server?")
        self.names = {BASE: bases[0], STUDENT: bases[0]}
        if self.adapter:
            from sftjudge.models.fingerprint import weights_digest

            name = f"sftjudge-{weights_digest(self.adapter)[:16]}"
            if name not in {e["id"] for e in listed}:
                self.client.request("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": str(self.adapter)})
            self.names[STUDENT] = name

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and self.config.vllm.base_url and self.names.get(STUDENT, BASE) != self.names[BASE]:
            try:  # best effort: the sidecar keeps serving; an adapter left loaded only takes a slot
                client.request("POST", "/unload_lora_adapter", {"lora_name": self.names[STUDENT]})
            except Exception:  # noqa: BLE001
                pass
        if client is not None:
            client.close()
        server, self.server = self.server, None
        if server is not None:
            server.stop()
