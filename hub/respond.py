"""From a decision to its record and planned deliveries, in the caller's transaction.

The pipeline (decisions of an event) and the timer engine (decisions of an
absence running out) both end here, so caps, consent, quiet hours and the
decision log behave the same whichever way a rule fired.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from hub import metrics
from hub.model import Decision
from hub.routing import Router
from hub.rules import Selector
from hub.store import decisions, outbox, touchpoints
from hub.store.identity_graph import profile_view

CAP_PERIOD = timedelta(days=1)


class StoreHistory:
    """`triggers.History` answered from the store, inside the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def events(self, profile_id: str, since: datetime, until: datetime, selector: Selector | None) -> list[dict[str, Any]]:
        if selector is None:
            return touchpoints.events(self.connection, profile_id, since, until)
        return touchpoints.events(
            self.connection, profile_id, since, until, names=selector.events, stage=selector.stage, moment=selector.moment
        )

    def decisions_since(self, profile_id: str, rule_id: str, since: datetime) -> int:
        return decisions.count_since(self.connection, profile_id, rule_id, since)


class Responder:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._capped_channels = [name for name, route in router.routes.items() if route.reaches_person]

    def respond(
        self,
        connection: Connection,
        decision: Decision,
        touchpoint: dict[str, Any],
        now: datetime,
        profile: dict[str, Any] | None = None,
    ) -> int:
        """Record the decision with each action's fate and plan its deliveries; returns how many were planned.

        `profile` is the `profile_view` when the caller has it already. A decision already recorded (the
        same event or timer processed again) plans nothing.
        """
        profile = profile or profile_view(connection, decision.profile_id)
        if profile is None:
            raise LookupError(f"decision {decision.decision_id} names unknown profile {decision.profile_id}")
        messages_today = 0
        if self.router.policy.daily_cap is not None:
            messages_today = outbox.planned_since(connection, profile["profile_id"], self._capped_channels, now - CAP_PERIOD)
        plan = self.router.plan(decision, profile, touchpoint, now=now, messages_today=messages_today)
        if not decisions.record(connection, decision, plan.fates(), now):
            return 0
        if decision.status == "fired":
            metrics.DECISIONS.labels(rule=decision.rule_id).inc()
        return outbox.plan(connection, plan.deliveries, now)
