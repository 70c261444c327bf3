"""`sftjudge review RUN`: a local page on 127.0.0.1 where a person grades the run's review sample.

A plain static page (review/page.html) and three JSON routes on FastAPI/uvicorn (both come with Prefect): the
sample as shown (the champion's and this run's answers as "first" and "second", never named), a label, and the
agreement so far. Every label is saved atomically the moment it is given (labels.py).

Only this machine's browser gets in: the server listens on 127.0.0.1, answers only requests addressed to
127.0.0.1 or localhost (a page elsewhere cannot reach it by re-pointing its own name at 127.0.0.1), and its API
wants the key of this server start, which rides in the printed address's fragment (never sent in a request line,
so never in a log). A request body is at most MAX_BODY bytes: a label is a few fields and a note.
"""

from __future__ import annotations

import errno
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.errors import DataError, UserError
from sftjudge.judge.calibrate import save_calibration
from sftjudge.models.embedded import sftjudge_home
from sftjudge.review.agreement import agreement, agreement_lines
from sftjudge.review.labels import MAX_NOTE, LabelStore, shown_pair, side_to_choice
from sftjudge.review.sample import load_or_build, sample_hash
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_json_if_present, read_jsonl

PAGE = Path(__file__).resolve().parent / "page.html"
HOSTS = ("127.0.0.1", "localhost")
TOKEN_HEADER = "X-Review-Token"
MAX_BODY = 4 * MAX_NOTE + 4096  # bytes: the longest note in UTF-8, and the other fields


class Review:
    """One run's review: its frozen sample, the labels given so far, and the agreement they imply."""

    def __init__(self, run: RunDir, config: RunConfig):
        self.run, self.config = run, config
        self.lock = threading.Lock()
        self.sample = load_or_build(run, config.review.sample_size)
        self.sha256 = sample_hash(self.sample)
        self.store = LabelStore(run, self.sample, self.sha256)
        metrics = read_json_if_present(run / files.METRICS) or {}
        self.judge = metrics.get("judge", "unknown")
        self.pairwise = ({p["id"]: p["outcome"] for p in read_jsonl(run / files.PAIRWISE)}
                         if (run / files.PAIRWISE).is_file() else {})

    def shown(self) -> dict[str, Any]:
        """The sample as the page shows it, with the labels given so far (choices as first / second)."""
        with self.lock:
            self.store.refresh()
        items = []
        for item in self.sample:
            pair = shown_pair(item)
            label = self.store.labels.get(item["id"], {})
            items.append({"id": item["id"], "instruction": item["instruction"], "reference": item["reference"],
                          "answer": item["answer"], "pair": list(pair) if pair else None,
                          "label": {"passed": label.get("passed"), "grade": label.get("grade"),
                                    "choice": side_to_choice(item, label.get("choice")),
                                    "note": label.get("note", "")}})
        return {"run": self.run.run_id, "items": items, "progress": self.store.progress()}

    def label(self, item_id: str, raw: dict[str, Any]) -> dict[str, Any]:
        # One label at a time: the server answers requests on several threads, and the label file and the
        # agreement must each be written from one consistent state.
        with self.lock:
            self.store.give(item_id, raw, where=f"label for item {item_id!r}")
            result = self.agreement()
            return {"progress": self.store.progress(), "agreement": result}

    def agreement(self) -> dict[str, Any]:
        """Agreement over the labels so far, written to review/agreement.json."""
        result = agreement(self.sample, self.store.labels, self.pairwise, self.config.review, judge=self.judge,
                           ci_level=self.config.decide.ci_level) | {"sample_sha256": self.sha256}
        result["lines"] = agreement_lines(result)  # what the report and `sftjudge show` print
        atomic_write_json(self.run / files.REVIEW_AGREEMENT, result)
        if result["pass_fail"]["items"]:
            # Kept per judge identity too: later runs' reports (and `judge calibrate` users) see real labels.
            save_calibration(sftjudge_home(self.config.home), self.judge, {
                "kind": "human review", "at": result["at"], "run": self.run.run_id,
                "items": result["pass_fail"]["items"], "agreement": result["pass_fail"]["agreement"],
                "spearman": result["grades"]["spearman"], "calibrated": result["calibrated"]})
        return result


def app(review: Review, token: str | None = None):
    """The page and its API; with `token`, the API answers only requests carrying it (`serve` always sets one)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.middleware.trustedhost import TrustedHostMiddleware

    api = FastAPI(title=f"sftjudge review {review.run.run_id}", docs_url=None, redoc_url=None, openapi_url=None)

    @api.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/api/"):
            given = request.headers.get(TOKEN_HEADER, "")
            if token is not None and not secrets.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "this review server wants its key: open the address "
                                               "`sftjudge review` printed (it ends in #token=...)"}, status_code=403)
            if request.method == "POST":
                size = request.headers.get("content-length")
                if size is None or not size.isdigit():
                    return JSONResponse({"detail": "a label needs a Content-Length"}, status_code=411)
                if int(size) > MAX_BODY:
                    return JSONResponse({"detail": f"a label is at most {MAX_BODY:,} bytes"}, status_code=413)
        return await call_next(request)

    api.add_middleware(TrustedHostMiddleware, allowed_hosts=list(HOSTS))  # outermost: checked first

    @api.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @api.get("/api/sample")
    def sample() -> dict[str, Any]:
        return review.shown()

    @api.post("/api/label/{item_id:path}")  # an item id may hold a "/"
    def label(item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return review.label(item_id, body)
        except DataError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    @api.get("/api/agreement")
    def current() -> dict[str, Any]:
        with review.lock:
            return review.agreement()

    return api


def listen(port: int) -> socket.socket:
    """A socket on 127.0.0.1:`port` (0: any free port), or a UserError that says what to do."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 1-65535 (or 0 for any free one)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on 127.0.0.1 is in use (another `sftjudge review`?); pass --port N, or "
                            f"--port 0 for any free one") from None
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pass another --port") from None
    sock.listen(64)
    return sock


def serve(review: Review, port: int) -> None:
    """Serve the review page on 127.0.0.1 until interrupted."""
    import uvicorn

    sock = listen(port)
    token = secrets.token_urlsafe(16)
    port = sock.getsockname()[1]
    print(f"review {review.run.run_id}: http://127.0.0.1:{port}/#token={token}  ({review.store.progress()['labelled']} "
          f"of {len(review.sample)} items labelled; Ctrl-C to stop - every label is already saved)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app(review, token), log_level="warning"))
    with sock:
        server.run(sockets=[sock])
