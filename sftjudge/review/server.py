"""`sftjudge review RUN`: a local page on 127.0.0.1 where a person grades the run's review sample.

A plain static page (review/page.html) and three JSON routes on FastAPI/uvicorn (both come with Prefect): the
sample as shown (the champion's and this run's answers as "first" and "second", never named), a label, and the
agreement so far. Every label is saved atomically the moment it is given (labels.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.errors import DataError
from sftjudge.judge.calibrate import save_calibration
from sftjudge.models.embedded import sftjudge_home
from sftjudge.review.agreement import agreement, agreement_lines
from sftjudge.review.labels import LabelStore, shown_pair, side_to_choice
from sftjudge.review.sample import load_or_build, sample_hash
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json, read_json_if_present, read_jsonl

PAGE = Path(__file__).resolve().parent / "page.html"


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


def app(review: Review):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    api = FastAPI(title=f"sftjudge review {review.run.run_id}", docs_url=None, redoc_url=None)

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


def serve(review: Review, port: int) -> None:
    """Serve the review page on 127.0.0.1 until interrupted."""
    import uvicorn

    print(f"review {review.run.run_id}: http://127.0.0.1:{port}/  ({review.store.progress()['labelled']} of "
          f"{len(review.sample)} items labelled; Ctrl-C to stop - every label is already saved)", flush=True)
    uvicorn.run(app(review), host="127.0.0.1", port=port, log_level="warning")
