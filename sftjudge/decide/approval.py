"""A promotion that waits for a person (decide.require_approval): the decide stage records the run as
`awaiting_approval` without moving the champion; the flow pauses for an answer in the Prefect UI; this module
applies the answer: approve promotes (if the champion is still the one the run was compared with), reject or no
answer in time holds, each with its reason in decision.json, the registry and the report.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from sftjudge.config import RunConfig
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_json
from sftjudge.run.registry import ChampionChanged, Registry

AWAITING = "awaiting_approval"
# The reason the decide stage adds while the run waits; the answer replaces it with what the person said.
WAITING_REASON = ("the promotion waits for a person (decide.require_approval): approve or reject it in the Prefect "
                  "UI")


class Approval(BaseModel):
    """A person's answer to a promotion waiting for approval."""

    approve: bool = Field(False, description="Promote this run to champion (leave unticked to reject).")
    note: str = Field("", description="Why: kept with the decision as its reason.")


def approval_request(run: RunDir) -> str:
    """What the person sees above the approve/reject form: the run, the reasons, where the report is."""
    decision = json.loads((run / files.DECISION).read_text())
    reasons = "\n".join(f"- {r}" for r in decision["reasons"] if r != WAITING_REASON)
    return (f"**Run {run.run_id} passed every gate and waits for your approval to become champion.**\n\n{reasons}\n\n"
            f"Report: `{(run / files.REPORT).resolve()}` (also the `report` artifact of this flow run). Tick "
            f"*approve* to promote it; leave it unticked to hold, with your note as the reason.")


def apply_answer(run: RunDir, config: RunConfig, answer: Approval | None) -> dict[str, Any]:
    """Promote or hold a run awaiting approval; `answer` None means no answer arrived in time. Returns the
    decision as written. A run not awaiting approval is left as it is (a retried task changes nothing)."""
    from sftjudge.decide.report import write_report

    decision = json.loads((run / files.DECISION).read_text())
    if decision["action"] != AWAITING:
        return decision
    registry = Registry.in_runs_dir(config.runs_dir)
    row = registry.get(run.run_id) or {"run_id": run.run_id}
    reasons = [r for r in decision["reasons"] if r != WAITING_REASON]
    note = f": {answer.note}" if answer and answer.note.strip() else ""
    if answer is None:
        action, why = "hold", f"no approval within {config.decide.approval_timeout_s} s (decide.approval_timeout_s)"
    elif answer.approve:
        action, why = "promote", f"approved by a person{note}"
    else:
        action, why = "hold", f"rejected by a person{note or ' (no note given)'}"
    if action == "hold":  # the rules' reasons promised a promotion that did not happen: say so
        reasons = [f"the rules alone would have promoted it: {r}" for r in reasons]
    decision |= {"action": action, "reasons": [why, *reasons]}
    row |= {"decision": action, "reasons": decision["reasons"]}
    try:
        registry.record(row, promote=action == "promote", how="approval",
                        expected_champion=decision["champion_before"])
    except ChampionChanged as exc:
        decision |= {"action": "hold", "reasons": [f"approved, but not promoted: {exc}; run `sftjudge promote "
                                                    f"{run.run_id}` if it should still replace the champion", *reasons]}
        registry.record(row | {"decision": "hold", "reasons": decision["reasons"]}, promote=False)
    atomic_write_json(run / files.DECISION, decision)
    run.update_manifest(decision=decision)
    write_report(run)
    return decision
