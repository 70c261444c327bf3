"""A stand-in for vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server ...`) for CPU tests.

`install(folder)` writes a `vllm` package into `folder` whose server module runs `main()` here; with `folder` and
this tests folder on PYTHONPATH, the project's own `start_server` starts it exactly as it starts vLLM. It parses
the flags the project passes (an unknown flag exits with status 2, as vLLM's parser does), serves the model with
transformers (greedy), LoRA adapters by name - given at start (`--lora-modules`) or loaded at runtime
(/v1/load_lora_adapter, when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set) - and answers chat requests as the
scripted served-judge fake does. Each start and each request is appended to $VLLM_STAND_IN_RECORD, with the
process ids of earlier servers still alive when it started: two servers on one card at once show there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SERVER_MODULE = "from vllm_stand_in import main\n\nif __name__ == '__main__':\n    main()\n"


def install(folder: Path) -> Path:
    """A fake `vllm` package under `folder` (put `folder` on PYTHONPATH); returns `folder`."""
    package = folder / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True, exist_ok=True)
    for part in (folder / "vllm", folder / "vllm" / "entrypoints", package):
        (part / "__init__.py").write_text("")
    (package / "api_server.py").write_text(SERVER_MODULE)
    return folder


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _record(entry: dict) -> None:
    with open(os.environ["VLLM_STAND_IN_RECORD"], "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for flag in ("--model", "--served-model-name", "--host", "--dtype"):
        p.add_argument(flag, required=flag in ("--model", "--host"))
    for flag in ("--port", "--max-model-len", "--max-logprobs", "--tensor-parallel-size", "--max-loras",
                 "--max-lora-rank"):
        p.add_argument(flag, type=int)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--disable-log-stats", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--lora-modules", nargs="+", default=[])
    return p


class Models:
    """The base model and its adapters, each a transformers model on the CPU."""

    def __init__(self, base: str):
        from sftjudge.models.loading import load_causal_lm

        self.base_path = base
        self.base, self.tokenizer = load_causal_lm(base)
        self.adapters: dict[str, object] = {}
        self.lock = threading.Lock()

    def add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        from sftjudge.models.loading import load_causal_lm

        model, _ = load_causal_lm(self.base_path)
        self.adapters[name] = PeftModel.from_pretrained(model, path).merge_and_unload().eval()

    def complete(self, model, body: dict) -> dict:
        import torch

        ids, tok = list(body["prompt"]), self.tokenizer
        with self.lock, torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=body["max_tokens"], do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id in new:
            end = new.index(tok.eos_token_id)
            text, count, finish = tok.decode(new[:end], skip_special_tokens=True), end + 1, "stop"
        else:
            text, count, finish = tok.decode(new, skip_special_tokens=True), len(new), "length"
        return {"choices": [{"index": 0, "text": text, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": count}}


def main() -> None:
    args = _parser().parse_args()
    earlier = [r["pid"] for r in records(Path(os.environ["VLLM_STAND_IN_RECORD"])) if "argv" in r]
    _record({"argv": sys.argv[1:], "pid": os.getpid(), "alive_before": [p for p in earlier if alive(p)]})
    name = args.served_model_name or args.model
    models = Models(args.model)
    for module in args.lora_modules:
        adapter, path = module.split("=", 1)
        models.add_adapter(adapter, path)
    runtime_lora = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            listed = [{"id": name, "root": args.model, "max_model_len": args.max_model_len}]
            listed += [{"id": a, "root": a, "parent": name} for a in models.adapters]
            self._send(200, {"data": listed})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            _record({"path": self.path, "model": body.get("model")})
            if self.path.endswith("/load_lora_adapter") and runtime_lora:
                models.add_adapter(body["lora_name"], body["lora_path"])
                return self._send(200, {})
            if self.path.endswith("/unload_lora_adapter") and runtime_lora:
                models.adapters.pop(body["lora_name"], None)
                return self._send(200, {})
            if self.path.endswith("/chat/completions"):
                from served_fake import Script, chat_reply

                return self._send(200, chat_reply(Script(), body))
            model = models.base if body.get("model") == name else models.adapters.get(body.get("model"))
            if not self.path.endswith("/completions") or model is None:
                return self._send(404, {"error": {"message": f"no {self.path} for model {body.get('model')}"}})
            self._send(200, models.complete(model, body))

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
