"""A decision as an event: what the decide stage tells the outside world (Prefect events; automations notify).

The event is built here from the run directory, without Prefect; tasks/events.py emits it. Names:
sftjudge.run.promoted | held | rolled-back | awaiting-approval; the resource is the run
(`sftjudge.run.<run id>`), the payload the action, its reasons and the scores it was decided on. A retried flow
may emit the same decision twice: consumers should treat the run id as the key.
"""

from __future__ import annotations

from typing import Any

from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import read_json_if_present

EVENT_NAMES = {"promote": "sftjudge.run.promoted", "hold": "sftjudge.run.held",
               "rollback": "sftjudge.run.rolled-back", "awaiting_approval": "sftjudge.run.awaiting-approval"}


def decision_event(run: RunDir) -> dict[str, Any] | None:
    """emit_event's arguments for the run's recorded decision; None when no decision is recorded."""
    decision = read_json_if_present(run.path / files.DECISION)
    if not decision:
        return None
    metrics = read_json_if_present(run.path / files.METRICS) or {}
    action = decision.get("action")
    pairwise = metrics.get("pairwise") or {}
    return {
        "event": EVENT_NAMES.get(action, f"sftjudge.run.{action}"),
        "resource": {"prefect.resource.id": f"sftjudge.run.{run.run_id}", "prefect.resource.name": run.run_id,
                     "sftjudge.action": str(action)},
        "payload": {"run_id": run.run_id, "action": action, "reasons": decision.get("reasons", []),
                    "judge_score": metrics.get("judge_score_mean"),
                    "normalised": (metrics.get("normalised") or {}).get("run"),
                    "win_rate_vs_champion": pairwise.get("win_rate"),
                    "judge_valid": (metrics.get("health") or {}).get("valid"),
                    "run_dir": str(run.path)},
    }
