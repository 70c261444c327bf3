"""A promotion waiting for a person: pause the flow run for an approve/reject answer in the Prefect UI, then apply
it (sftjudge/decide/approval.py). The pause holds no GPU and no worker slot beyond the flow's own process."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from sftjudge.tasks.policy import STAGE_TASK_OPTIONS

from sftjudge.config import RunConfig
from sftjudge.decide.approval import AWAITING, Approval, apply_answer, approval_request
from sftjudge.run.directory import RunDir


def await_approval(run_path: str, config: RunConfig, decided: dict[str, Any]) -> dict[str, Any] | None:
    """When the decide stage left the run awaiting approval: pause for the answer and apply it. Else nothing."""
    if (decided.get("counts") or {}).get("action") != AWAITING:
        return None
    run = RunDir(run_path)
    form = RunInput.subclass_from_base_model_type(Approval).with_initial_data(
        description=approval_request(run), approve=False, note="")
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=config.decide.approval_timeout_s,
                                key=f"approve-{run.run_id}")
    except FlowPauseTimeout:
        get_run_logger().warning(f"run {run.run_id}: no answer within {config.decide.approval_timeout_s} s; held")
        answer = None
    given = {"approve": answer.approve, "note": answer.note} if answer is not None else None
    return apply_approval(run_path, config, given)


@task(name="apply-approval", **STAGE_TASK_OPTIONS)
def apply_approval(run_path: str, config: RunConfig, answer: dict[str, Any] | None) -> dict[str, Any]:
    decision = apply_answer(RunDir(run_path), config, Approval(**answer) if answer is not None else None)
    from sftjudge.tasks import artifacts, events

    artifacts.report(run_path)
    events.emit_decision(run_path)  # the answered decision: promoted or held
    return decision
