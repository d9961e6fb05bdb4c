"""The chain from event to delivery behind one decision, for `GET /api/decisions/{id}` and the CLI.

A decision records its rule id and version, the touchpoints that satisfied
the rule and each action's fate; this joins in what happened next (each
delivery with its attempts) and, for an absence rule, the timer that fired.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from hub.store import decisions, outbox, touchpoints
from hub.store.schema import timers


def explain(connection: Connection, decision_id: str) -> dict[str, Any] | None:
    decision = decisions.get(connection, decision_id)
    if decision is None:
        return None
    evidence = decision["evidence"]
    timer = connection.execute(select(timers).where(timers.c.decision_id == decision_id)).mappings().first()
    return {
        **decision,
        "touchpoints": touchpoints.summaries(connection, evidence.get("touchpoints", [decision["touchpoint_id"]])),
        "timer": dict(timer) if timer else None,
        "deliveries": outbox.search(connection, limit=100, decision_id=decision_id),
    }
