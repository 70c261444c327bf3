"""Notifications for sftjudge on the current Prefect server: one webhook block and three automations, idempotent.

- "sftjudge: rollback"   on sftjudge.run.rolled-back (the decide stage's event, sftjudge/decide/events.py)
- "sftjudge: promotion"  on sftjudge.run.promoted
- "sftjudge: run failed" on a fine-tune-then-judge or gpu-stages flow run that Failed or Crashed

Each sends, through the Custom Webhook block `sftjudge-notify`, a JSON body {"subject", "body"} rendered from the
event (run id, action, reasons, score). Running it again updates the block's URL and the automations in place.
Used by `python deployments/setup.py --notify-url URL`.
"""

from __future__ import annotations

BLOCK = "sftjudge-notify"
FLOWS = ["fine-tune-then-judge", "gpu-stages"]
DECISION_BODY = ("run {{ event.payload.run_id }}: {{ event.payload.action }}, judge score "
                 "{{ event.payload.judge_score }}, win rate vs champion {{ event.payload.win_rate_vs_champion }}.\n"
                 "{% for reason in event.payload.reasons %}- {{ reason }}\n{% endfor %}"
                 "run directory: {{ event.payload.run_dir }}")
FAILED_BODY = ("flow run {{ flow_run.name }} ({{ flow.name }}) is {{ flow_run.state.name }}: "
               "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}")


def automations(block_id) -> list:
    """The three automations (not yet created), notifying through the block `block_id`."""
    from prefect.automations import Automation, EventTrigger, SendNotification

    def on(name: str, trigger: EventTrigger, subject: str, body: str) -> Automation:
        return Automation(name=name, description="created by deployments/setup.py", trigger=trigger,
                          actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)])

    decision = {"sftjudge.run.rolled-back": ("sftjudge: rollback", "sftjudge: run {{ event.payload.run_id }} "
                                                                   "rolled back"),
                "sftjudge.run.promoted": ("sftjudge: promotion", "sftjudge: run {{ event.payload.run_id }} "
                                                                 "promoted")}
    out = [on(name, EventTrigger(expect={event}, match={"prefect.resource.id": "sftjudge.run.*"},
                                 posture="Reactive", threshold=1), subject, DECISION_BODY)
           for event, (name, subject) in decision.items()]
    out.append(on("sftjudge: run failed",
                  EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                               match={"prefect.resource.id": "prefect.flow-run.*"},
                               match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
                               posture="Reactive", threshold=1),
                  "sftjudge: flow run {{ flow_run.name }} {{ flow_run.state.name }}", FAILED_BODY))
    return out


def ensure_notifications(url: str) -> list[str]:
    """Create or update the webhook block and the automations; return the automations' names."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name=BLOCK, url=url, json_data={"subject": "{{subject}}",
                                                                          "body": "{{body}}"})
    block_id = block.save(BLOCK, overwrite=True)
    names = []
    for wanted in automations(block_id):
        try:
            existing = Automation.read(name=wanted.name)
        except ValueError:
            wanted.create()
        else:
            wanted.id = existing.id
            wanted.update()
        names.append(wanted.name)
    return names
