"""Emit the decide stage's decision as a Prefect event (built in sftjudge/decide/events.py), for automations."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.events import emit_event

from sftjudge.decide.events import decision_event
from sftjudge.run.directory import RunDir


def emit_decision(run_path: str) -> None:
    """Send the run's decision as an event; the flow and task runs become related resources by themselves."""
    event = decision_event(RunDir(run_path))
    if event is None:
        return
    emitted = emit_event(**event)
    get_run_logger().info(f"event {event['event']} for run {event['payload']['run_id']}"
                          + ("" if emitted else " not sent (events are off in this Prefect profile)"))
