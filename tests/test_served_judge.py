"""judge.backend=openai: label probabilities read from a server's top_logprobs, text judges through chat, bounded
concurrency, retries with backoff on transient failures only, and the API key never leaving the request header.
Against a scripted server on 127.0.0.1 (tests/served_fake.py); the real `vllm serve` is in test_served_vllm.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjudge.errors import JudgeError
from sftjudge.judge.served import ServedChat, ServedLogprobJudge, ServedRubricJudge, served_distribution
from sftjudge.judge.spec import load_judge
from sftjudge.judge.text import TextJudge
from sftjudge.runtime.served_client import ServedClient

import served_fake

REPO = Path(__file__).resolve().parent.parent
ITEM = {"id": "q1", "instruction": "What is 6 times 7?", "reference": "42", "answer": "42"}


@pytest.fixture
def server():
    script = served_fake.Script()
    httpd, url = served_fake.start(script)
    yield script, url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def client(url: str, **settings) -> ServedClient:
    waits: list[float] = []
    made = ServedClient(base_url=url, model="judge-x", sleep=waits.append, **settings)
    made.waits = waits
    return made


def reference_score(tok, url, **settings):
    return ServedLogprobJudge(client(url, **settings), tok, load_judge(REPO / "judges", "reference-score"))


def test_the_expected_score_comes_from_the_label_probabilities(server, tok):
    script, url = server
    script.distribution = lambda body: {"8": 0.6, "9": 0.3, " 9": 0.05, "!": 0.05}
    [judgment] = reference_score(tok, url).score([ITEM])
    # After "Score: " only the exact label token counts (as in process): " 9" would read "Score:  9".
    assert judgment.score == pytest.approx((8 * 0.6 + 9 * 0.3) / 0.9)
    assert judgment.label_mass == pytest.approx(0.9)
    body = script.requests[-1]["body"]
    # The judge's answer prefix is a started reply the server continues, as in process.
    assert body["messages"][-1] == {"role": "assistant", "content": "Score: "}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0


def test_without_prefill_a_digit_with_a_leading_space_is_the_same_label(server, tok):
    script, url = server
    script.distribution = lambda body: {"8": 0.6, "9": 0.3, " 9": 0.05, "!": 0.05}
    spec = load_judge(REPO / "judges", "reference-score")
    [judgment] = ServedLogprobJudge(client(url), tok, spec, prefill=False).score([ITEM])
    assert judgment.score == pytest.approx((8 * 0.6 + 9 * 0.35) / 0.95)
    assert script.requests[-1]["body"]["messages"][-1]["role"] == "user"  # no started reply sent


def test_ten_is_read_from_one_then_zero(server, tok):
    script, url = server
    script.distribution = lambda body: {"1": 0.8, "9": 0.2}
    script.after_one = {"0": 0.75, "\n": 0.25}  # after "1": "10" three times in four
    [judgment] = reference_score(tok, url).score([ITEM])
    assert judgment.distribution["10"] == pytest.approx(0.6)
    assert judgment.distribution["1"] == pytest.approx(0.2)
    assert judgment.score == pytest.approx(10 * 0.6 + 1 * 0.2 + 9 * 0.2)
    assert len(script.requests) == 1  # the server chose "1": its second position was enough


def test_ten_needs_a_second_request_when_the_server_chose_another_digit(server, tok):
    script, url = server
    script.distribution = lambda body: (
        {"0": 0.9, "5": 0.1} if body["messages"][-1]["content"].endswith("1") else {"9": 0.6, "1": 0.4})
    [judgment] = reference_score(tok, url).score([ITEM])
    assert [r["body"]["messages"][-1]["content"] for r in script.requests] == ["Score: ", "Score: 1"]
    assert judgment.distribution["10"] == pytest.approx(0.36)
    assert judgment.distribution["1"] == pytest.approx(0.04)


def test_served_distribution_without_the_second_read_keeps_one_as_one():
    assert served_distribution({"1": 0.5, "9": 0.5}, None, ["1", "9", "10"]) == {"1": 0.5, "9": 0.5, "10": 0.0}


def test_a_server_that_returns_no_logprobs_is_a_clear_error(server, tok):
    script, url = server
    script.logprobs = False
    with pytest.raises(JudgeError, match="no top_logprobs.*judge.mode: text"):
        reference_score(tok, url).score([ITEM])


def test_transient_failures_are_retried_with_growing_backoff(server, tok):
    script, url = server
    script.fail_with = [503, 502, 429]
    served = reference_score(tok, url)
    [judgment] = served.score([ITEM])
    assert judgment.score is not None
    assert len(script.requests) == 4
    waits = served.client.waits
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2]


def test_retry_after_is_honoured(server, tok):
    script, url = server
    script.fail_with, script.retry_after = [429], "7"
    served = reference_score(tok, url)
    served.score([ITEM])
    assert served.client.waits == [7.0]


def test_a_client_error_is_not_retried_and_says_why(server, tok):
    script, url = server
    script.fail_with = [400]
    with pytest.raises(JudgeError, match="HTTP 400: scripted failure 400.*not retried"):
        reference_score(tok, url).score([ITEM])
    assert len(script.requests) == 1


def test_giving_up_after_max_retries_names_the_setting(server, tok):
    script, url = server
    script.fail_with = [503] * 10
    with pytest.raises(JudgeError, match="failed 3 times.*judge.openai.max_retries"):
        reference_score(tok, url, max_retries=2).score([ITEM])
    assert len(script.requests) == 3


def test_an_unreachable_server_is_retried_then_named(tok):
    with pytest.raises(JudgeError, match=r"http://127.0.0.1:9/v1/chat/completions failed 2 times \(ConnectError"):
        reference_score(tok, "http://127.0.0.1:9/v1", max_retries=1).score([ITEM])


def test_the_api_key_goes_in_the_header_and_nowhere_else(server, tok, monkeypatch):
    script, url = server
    monkeypatch.setenv("SFTJUDGE_JUDGE_API_KEY", "sk-secret-123")
    reference_score(tok, url).score([ITEM])
    assert script.requests[-1]["headers"]["Authorization"] == "Bearer sk-secret-123"
    script.fail_with = [401]
    with pytest.raises(JudgeError) as refused:
        reference_score(tok, url).score([ITEM])
    assert "$SFTJUDGE_JUDGE_API_KEY" in str(refused.value) and "sk-secret-123" not in str(refused.value)


def test_requests_in_flight_stay_within_the_concurrency_bound(server, tok):
    script, url = server
    script.delay_s = 0.05
    items = [ITEM | {"id": f"q{i}"} for i in range(12)]
    judged = reference_score(tok, url, concurrency=3).score(items)
    assert [j.id for j in judged] == [i["id"] for i in items]  # in order
    assert 1 < script.most_in_flight <= 3


def test_a_rubric_reads_each_dimension_after_its_opening(server, tok):
    script, url = server
    scores = {"Accuracy: ": {"9": 1.0}, "Completeness: ": {"7": 1.0}, "Format: ": {"5": 1.0},
              "Clarity and tone: ": {"3": 1.0}}
    script.distribution = lambda body: scores[body["messages"][-1]["content"]]
    rubric = ServedRubricJudge(client(url), tok, load_judge(REPO / "judges", "rubric"))
    [judgment] = rubric.score([ITEM])
    assert judgment.dimensions == {"accuracy": 9.0, "completeness": 7.0, "format": 5.0, "clarity": 3.0}
    assert judgment.score == 6.0
    with pytest.raises(JudgeError, match="prefill"):
        ServedRubricJudge(client(url), tok, load_judge(REPO / "judges", "rubric"), prefill=False)


def test_a_text_judge_replies_through_chat_and_is_validated(server, tok):
    script, url = server
    replies = iter(['I think {"score": 11}', '{"score": 6}'])
    script.reply = lambda body: next(replies)
    judge = TextJudge(ServedChat(client(url)), tok, load_judge(REPO / "judges", "reference-score"))
    [judgment] = judge.score([ITEM])
    assert judgment.score == 6.0 and "--- repair ---" in judgment.raw  # out of range, repaired once
    repair = script.requests[-1]["body"]["messages"]
    assert [m["role"] for m in repair][-2:] == ["assistant", "user"]
    assert "score 11 outside 1-10" in repair[-1]["content"]


def test_a_server_that_echoes_the_authorization_header_never_puts_the_key_in_an_error(server, tok, monkeypatch):
    script, url = server
    monkeypatch.setenv("SFTJUDGE_JUDGE_API_KEY", "sk-secret-123")
    script.fail_with, script.echo_headers = [400], True
    with pytest.raises(JudgeError) as refused:
        reference_score(tok, url).score([ITEM])
    # the error reaches stderr, manifest.json, `sftjudge show` and Prefect's database
    assert "request headers" in str(refused.value) and "sk-secret-123" not in str(refused.value)
    script.fail_with = [503, 503]
    with pytest.raises(JudgeError) as gave_up:
        reference_score(tok, url, max_retries=1).score([ITEM])
    assert "sk-secret-123" not in str(gave_up.value) and "Bearer" in str(gave_up.value)


def test_timeout_s_is_a_deadline_for_the_whole_reply_not_each_read(tok):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Dripping(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(60):  # one byte every 0.2 s: each read is quick, the reply never ends
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(JudgeError, match=r"failed 1 times \(ReadTimeout: no whole reply within 1 s"):
            reference_score(tok, f"http://127.0.0.1:{server.server_address[1]}/v1", max_retries=0,
                            timeout_s=1).score([ITEM])
    finally:
        server.shutdown()
    assert time.monotonic() - started < 5  # before: the whole 12 s drip (90 s and more in the issue)
