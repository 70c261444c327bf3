"""A small client for an OpenAI-compatible server (vLLM's `vllm serve`, SGLang, TGI, Ollama, a hosted model).

Chat and text completions (`chat`, `request`), with bounded concurrency and retries: connection errors, timeouts,
408, 409, 425, 429 and 5xx are retried with exponential backoff (honouring Retry-After); any other 4xx is the
request's fault and fails at once with the server's message. The API key is read from an environment variable at request time and never
written anywhere: not in a run directory, a log line or an error message.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sftjudge.errors import JudgeError

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


@dataclass(kw_only=True)
class ServedClient:
    """Requests to one OpenAI-compatible server; `base_url` ends with /v1 (as OpenAI clients expect)."""

    base_url: str
    model: str
    api_key_env: str = "SFTJUDGE_JUDGE_API_KEY"
    concurrency: int = 4
    max_retries: int = 4
    timeout_s: float = 120.0
    backoff_s: float = 0.5
    service: str = "judge server"  # what errors call it, and the setting that points at it
    setting: str = "judge.openai.base_url or raise judge.openai.max_retries"
    sleep: Callable[[float], None] = time.sleep  # tests replace it to check the backoff without waiting
    _http: Any = field(default=None, repr=False)

    def _client(self):
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=self.timeout_s,
                                      limits=httpx.Limits(max_connections=self.concurrency))
        return self._http

    def _redacted(self, text: str) -> str:
        """`text` (a server's words) without the API key: a server may repeat the request's Authorization header in
        an error, and errors reach stderr, the manifest, `sftjudge show` and Prefect's database."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "[the key in $" + self.api_key_env + "]") if key else text

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _send(self, method: str, url: str, body: dict[str, Any] | None):
        """The whole reply within timeout_s of the request's start. httpx's own timeouts count per read, so a server
        that drips a byte now and then would hold the stage for ever; a reply past the deadline is a ReadTimeout
        (retried like any other)."""
        import httpx

        deadline = time.monotonic() + self.timeout_s
        with self._client().stream(method, url, json=body, headers=self._headers()) as streamed:
            content = bytearray()
            for chunk in streamed.iter_bytes():
                content += chunk
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no whole reply within {self.timeout_s:g} s", request=streamed.request)
            headers = {k: v for k, v in streamed.headers.items() if k.lower() not in ("content-encoding",
                                                                                     "content-length")}
            return httpx.Response(streamed.status_code, headers=headers, content=bytes(content),
                                  request=streamed.request)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request with retries on transient failures; the parsed JSON reply."""
        import httpx

        url = self.base_url.rstrip("/") + path
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2 ** attempt * (0.5 + random.random() / 2)
            try:
                reply = self._send(method, url, body)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may be starting or busy
                problem = self._redacted(f"{type(exc).__name__}: {exc}")
            else:
                if reply.status_code < 400:
                    try:
                        return reply.json()
                    except ValueError:
                        raise JudgeError(f"{self.service} {url}: the reply is not JSON "
                                         f"({self._redacted(reply.text[:200])!r})")
                problem = f"HTTP {reply.status_code}: {self._redacted(_server_message(reply))}"
                if reply.status_code not in TRANSIENT_STATUS:
                    raise JudgeError(f"{self.service} {url} refused the request ({problem}); not retried: a "
                                     f"{reply.status_code} means the request itself is wrong"
                                     + (f" or the key in ${self.api_key_env} is missing or wrong"
                                        if reply.status_code in (401, 403) else ""))
                wait = max(wait, _retry_after(reply))
            if attempt < self.max_retries:
                self.sleep(min(wait, MAX_BACKOFF_S))
        raise JudgeError(f"{self.service} {url} failed {self.max_retries + 1} times ({problem}); is it running and "
                         f"reachable? Check {self.setting}")

    def chat(self, messages: list[dict[str, str]], **options: Any) -> dict[str, Any]:
        """One chat completion: `options` are added to the request body (max_tokens, logprobs, ...)."""
        return self.request("POST", "/chat/completions", {"model": self.model, "messages": messages} | options)

    def served_model(self) -> dict[str, Any]:
        """The server's entry for `model` in /models (vLLM adds `root`, the path it loaded, and `max_model_len`)."""
        listed = self.request("GET", "/models").get("data") or []
        for entry in listed:
            if entry.get("id") == self.model:
                return entry
        names = ", ".join(str(e.get("id")) for e in listed) or "none"
        raise JudgeError(f"judge server {self.base_url} does not serve a model named {self.model!r} (it serves: "
                         f"{names}); set judge.openai.model to one of them")

    def map(self, work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`work(item)` for every item, at most `concurrency` at a time; results in order."""
        items = list(items)
        if self.concurrency == 1 or len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(work, items))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def _server_message(reply) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))[:300]
    return str(error or body.get("message") or body)[:300] if isinstance(body, dict) else str(body)[:300]


def _retry_after(reply) -> float:
    try:
        return float(reply.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
