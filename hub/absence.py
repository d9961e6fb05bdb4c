"""The timer engine: fires absence rules whose wait ran out ("cart activity, then nothing for 2 minutes").

Timers are armed and cancelled by the pipeline as events arrive; this engine
claims the due ones and, in one transaction per batch (a savepoint per
timer), decides, plans deliveries and marks each timer settled. A crash
before the commit leaves the timers pending, to be fired after the lease by
this or another process; a commit makes them settled, so each fires once.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection

from hub import triggers
from hub.clock import utcnow
from hub.respond import Responder, StoreHistory
from hub.rulebook import RuleBook
from hub.store import Store, sql, timers, touchpoints
from hub.store.identity_graph import live_profile_id, profile_view
from hub.store.timers import DueTimer

log = structlog.get_logger(__name__)


class TimerEngine:
    def __init__(
        self,
        store: Store,
        rulebook: RuleBook,
        responder: Responder,
        *,
        batch_size: int,
        lease: timedelta,
        deliveries_planned: threading.Event,
    ) -> None:
        self.store = store
        self.rulebook = rulebook
        self.responder = responder
        self.batch_size = batch_size
        self.lease = lease
        self._deliveries_planned = deliveries_planned

    def run_once(self, now: datetime | None = None) -> int:
        """Fire one batch of due timers; returns how many were handled. `now` is for simulations."""
        now = now or utcnow()
        with self.store.read() as connection:  # idle polls must not take the write lock from ingest
            if timers.pending_due(connection, now) == 0:
                return 0
        planned = 0
        with self.store.write() as connection:
            due = timers.claim_due(connection, self.batch_size, now, self.lease)
            if due:
                sql.lock_profiles(connection)  # a fired timer counts and plans a profile's deliveries
            for timer in due:
                try:
                    with connection.begin_nested():
                        planned += self._fire(connection, timer, now)
                except Exception:  # the claim stands: the timer is retried when its lease runs out
                    log.exception("timer failed to fire", timer_id=timer.timer_id, rule=timer.rule_id)
        if planned:
            self._deliveries_planned.set()
        return len(due)

    def _fire(self, connection: Connection, timer: DueTimer, now: datetime) -> int:
        rule = self.rulebook.get(timer.rule_id)
        anchor = touchpoints.get(connection, timer.touchpoint_id)
        profile_id = live_profile_id(connection, timer.profile_id)
        if rule is None or rule.absence is None or anchor is None or profile_id is None:
            timers.settle(connection, timer.timer_id, "lapsed", now)
            return 0
        profile = profile_view(connection, profile_id)
        assert profile is not None
        decision = triggers.evaluate_expired(rule, anchor, profile_id, timer.due_at, StoreHistory(connection), profile["traits"])
        if decision is None:
            timers.settle(connection, timer.timer_id, "cancelled", now)
            return 0
        planned = self.responder.respond(connection, decision, anchor.as_document(), now, profile)
        timers.settle(connection, timer.timer_id, "fired", now, decision.decision_id)
        return planned
