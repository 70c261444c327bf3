"""Decisions as Prefect events, end to end on a real Prefect server on 127.0.0.1: `deployments/setup.py
--notify-url` creates (idempotently) a webhook block and three automations; a real decide stage's promotion, a
rollback and a failed flow run each reach a webhook receiver on 127.0.0.1 through them."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from faults.faultkit import clone_run
from test_approval_e2e import judged_run  # noqa: F401 - a fixture
from test_deploy_e2e import PREFECT, REPO, prefect_server, run  # noqa: F401 - prefect_server is a fixture

from sftjudge.run import files

pytestmark = [pytest.mark.e2e, pytest.mark.flow]

AUTOMATIONS = """
from prefect import get_client
with get_client(sync_client=True) as client:
    print("\\n".join(sorted(a.name for a in client.read_automations())))
"""
RESUME = """
import json, sys
from sftjudge.config import RunConfig
from sftjudge.flows.cycle import fine_tune_then_judge
config = RunConfig.model_validate(json.loads(sys.argv[1]))
print(json.dumps(fine_tune_then_judge(config, resume=sys.argv[2])))
"""
EMIT = """
import sys
from prefect import flow
from sftjudge.tasks.events import emit_decision

@flow(name="emit-check")
def emitting(path):
    emit_decision(path)

emitting(sys.argv[1])
"""
BROKEN = """
from prefect import flow

@flow(name="fine-tune-then-judge")
def broken():
    raise RuntimeError("the data volume is gone")

broken()
"""


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        Receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def wait_for(text: str, seconds: float = 120) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        for body in Receiver.bodies:
            if text in body.get("subject", ""):
                return body
        time.sleep(1)
    raise AssertionError(f"no notification with {text!r} within {seconds} s; got {Receiver.bodies}")


def copied(judged_run, tmp_path, name):  # noqa: F811 - the fixture imported above
    config, base = judged_run
    runs = tmp_path / "runs"
    return config.model_copy(update={"runs_dir": str(runs)}), clone_run(base, runs, name)


def test_decisions_and_failures_reach_the_webhook_through_automations(prefect_server, webhook, judged_run,  # noqa: F811
                                                                      tmp_path):
    env = prefect_server["env"] | {"SFTJUDGE_INJECT_FAULT": ""}
    for _ in range(2):  # idempotent: a second run updates, never duplicates
        run([sys.executable, "deployments/setup.py", "--notify-url", webhook], env)
    names = run([sys.executable, "-c", AUTOMATIONS], env).stdout.split("\n")
    assert sorted(n for n in names if n.startswith("sftjudge")) == [
        "sftjudge: promotion", "sftjudge: rollback", "sftjudge: run failed"]

    # A real decide stage on a judged run: the first run of an empty registry is promoted.
    config, path = copied(judged_run, tmp_path, "promoted-run")
    summary = json.loads(run([sys.executable, "-c", RESUME, config.model_dump_json(), str(path)], env)
                         .stdout.strip().splitlines()[-1])
    assert summary["decision"] == "promote"
    promoted = wait_for("promoted-run promoted")
    assert "promote" in promoted["body"] and "judge score" in promoted["body"]

    # A rollback, as the decide stage records one: the reasons travel in the notification.
    _, rolled = copied(judged_run, tmp_path, "rolled-run")
    (rolled / files.DECISION).write_text(json.dumps({"action": "rollback", "reasons": [
        "val/train loss ratio 3.1 > 2.0: overfitting"]}))
    run([sys.executable, "-c", EMIT, str(rolled)], env)
    notice = wait_for("rolled-run rolled back")
    assert "val/train loss ratio 3.1 > 2.0: overfitting" in notice["body"]

    # A failed flow run of the cycle.
    done = __import__("subprocess").run([sys.executable, "-c", BROKEN], env=env, cwd=REPO, capture_output=True,
                                        text=True, timeout=120)
    assert done.returncode != 0
    failed = wait_for("Failed")
    assert "the data volume is gone" in failed["body"]
