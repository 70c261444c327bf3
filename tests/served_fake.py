"""A scripted OpenAI-compatible server on 127.0.0.1 for the served-judge tests: real HTTP, scripted answers.

It answers GET /v1/models and POST /v1/chat/completions. A chat request asking for logprobs gets the top
tokens of `distribution(body)` at the first position (the most probable one is the "generated" token); a second
position, when asked for, continues after "1" with `after_one`. Other chat requests get `reply(body)` as text.
`fail_with` lists statuses returned, in order, before any real answer; every request is recorded.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    distribution: Callable[[dict[str, Any]], dict[str, float]] = lambda body: {"8": 0.7, "9": 0.2, "x": 0.1}
    after_one: dict[str, float] = field(default_factory=lambda: {"0": 0.5, "\n": 0.5})
    reply: Callable[[dict[str, Any]], str] = lambda body: '{"score": 7}'
    fail_with: list[int] = field(default_factory=list)
    retry_after: str | None = None
    echo_headers: bool = False  # a failure's message repeats the request's headers, as some servers' errors do
    logprobs: bool = True
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _top(dist: dict[str, float]) -> list[dict[str, Any]]:
    ranked = sorted(dist.items(), key=lambda kv: -kv[1])
    return [{"token": token, "logprob": math.log(p), "bytes": list(token.encode())} for token, p in ranked if p > 0]


def chat_reply(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    if body.get("logprobs"):
        first = _top(script.distribution(body))
        positions = [{"token": first[0]["token"], "logprob": first[0]["logprob"], "top_logprobs": first}]
        if body.get("max_tokens", 1) > 1 and first[0]["token"] == "1":
            second = _top(script.after_one)
            positions.append({"token": second[0]["token"], "logprob": second[0]["logprob"], "top_logprobs": second})
        text = "".join(p["token"] for p in positions)
        logprobs = {"content": positions} if script.logprobs else None
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}]}
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": script.reply(body)}}]}


def start(script: Script) -> tuple[ThreadingHTTPServer, str]:
    """Serve `script` on a free port of 127.0.0.1; returns the server and its base URL (ending in /v1)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, body: dict[str, Any] | None) -> None:
            with script.lock:
                script.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
                failure = script.fail_with.pop(0) if script.fail_with and body is not None else None
            try:
                time.sleep(script.delay_s)
                if failure is not None:
                    extra = {"Retry-After": script.retry_after} if script.retry_after else None
                    echoed = f" (request headers: {dict(self.headers)})" if script.echo_headers else ""
                    self._send(failure, {"error": {"message": f"scripted failure {failure}{echoed}"}}, extra)
                elif self.path.endswith("/models"):
                    self._send(200, {"data": [{"id": "judge-x", "root": "/models/judge-x", "max_model_len": 4096,
                                               "owned_by": "scripted"}]})
                else:
                    self._send(200, chat_reply(script, body or {}))
            finally:
                with script.lock:
                    script.in_flight -= 1

        def do_GET(self):
            self._handle(None)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            self._handle(json.loads(self.rfile.read(length) or b"{}"))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
