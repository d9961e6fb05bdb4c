"""The timer engine: fires absence rules whose wait ran out ("cart activity, then nothing for 2 minutes").

Timers are armed and cancelled by the pipeline as events arrive; this engine
claims the due ones and fires them as a set, in one transaction: one read
of their anchors, four of their profiles (`profile_views`), one of their
follow-ups, one of their restarts (`timers.restarted`), one of their rules' caps, one of their daily caps, one insert
of decisions, one of deliveries, one update settling them. If any timer of
the set fails, the set is rolled back to its savepoint and each timer fires
on its own, so one bad timer never holds back its neighbours. A crash
before the commit leaves the timers pending, to be fired after the lease by
this or another process; a commit makes them settled, so each fires once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from hub import triggers
from hub.clock import utcnow
from hub.model import Decision, Touchpoint
from hub.respond import CapsReadAhead, Recorded, Responder, StoreHistory
from hub.rule_events import awaited
from hub.rule_history import History, ReadAhead
from hub.rulebook import RuleBook
from hub.rules import RuleSpec
from hub.selectors import event_names
from hub.store import Store, inbox, sql, timers, touchpoints
from hub.store.profile_views import profile_views
from hub.store.savepoints import as_set_or_one_by_one
from hub.store.timers import DueTimer, Settlement

log = structlog.get_logger(__name__)

CATCH_UP_RECHECK = timedelta(milliseconds=50)  # a timer held back until the pipeline has seen its possible follow-ups
RESCHEDULE_CHUNK = 500  # timers whose due time one write transaction brings forward after a rule edit


@dataclass(frozen=True, slots=True)
class _Firing:
    """A due timer with what deciding it needs: its rule, the touchpoint that armed it, the (live) profile."""

    timer: DueTimer
    rule: RuleSpec
    anchor: Touchpoint
    profile: dict[str, Any]


class TimerEngine:
    def __init__(
        self,
        store: Store,
        rulebook: RuleBook,
        responder: Responder,
        *,
        batch_size: int,
        lease: timedelta,
        deliveries_planned: Callable[[], None],
    ) -> None:
        self.store = store
        self.rulebook = rulebook
        self.responder = responder
        self.batch_size = batch_size
        self.lease = lease
        self._deliveries_planned = deliveries_planned
        self._next_due: datetime | None = None
        self._rules_seen: object = None

    def run_once(self, now: datetime | None = None) -> int:
        """Fire one batch of due timers; returns how many were handled. `now` is for simulations."""
        now = now or utcnow()
        self._follow_shortened_waits()
        with self.store.read() as connection:  # idle polls must not take the write lock from ingest
            self._next_due = timers.next_due(connection, now)
            due_now = self._next_due is not None and self._next_due <= now
            waiting = inbox.oldest_waiting(connection) if due_now else None
        if not due_now:
            return 0
        if waiting is not None and waiting <= self._next_due:  # nor while the pipeline catches up (`claim_due`)
            self._next_due = now + CATCH_UP_RECHECK
            return 0
        with self.store.write() as connection:
            # A fired timer counts and plans a profile's deliveries. The lock comes before the claim's row locks,
            # in the pipeline's order (it takes this lock, then settles timers): the other order deadlocks on
            # PostgreSQL whenever a follow-up is processed while its timer fires.
            sql.lock_profiles(connection)
            seen_until = inbox.oldest_waiting(connection) or timers.ALL_SEEN
            due = timers.claim_due(connection, self.batch_size, now, self.lease, seen_until)
            if not due:  # held back while the pipeline catches up (`timers.claim_due`): look again shortly
                self._next_due = now + CATCH_UP_RECHECK
            recorded = sum(as_set_or_one_by_one(
                connection, due, lambda batch: self._fire_set(connection, batch, now),
                lambda timer: self._fire_alone(connection, timer, now), kind="timer",
            ), Recorded())
        recorded.count()
        if recorded.planned:
            self._deliveries_planned()
        return len(due)

    def _follow_shortened_waits(self) -> None:
        """After an edit that shortens a rule's wait, bring its pending timers' due times forward to it.

        A timer is judged by the rule in force when it is claimed, but it is
        claimed by its stored due time: shortened from 30 minutes to 2, it
        would have waited the 30, and a follow-up in between cancelled a nudge
        the rule now sends. (A longer wait needs nothing here: the claim sends
        the timer back.) The waits are compared with those noted in the store,
        not in this worker, so an edit made while no timer worker ran is found
        by the next to start. They are noted after the timers are moved: a
        crash in between moves them again, which changes nothing.
        """
        rules = self.rulebook.current()
        if rules is self._rules_seen:  # each run: unchanged rules cost one comparison
            return
        waits = {rule.id: rule.absence.within for rule in rules if rule.absence is not None}
        with self.store.read() as connection:
            noted = timers.noted_waits(connection)
        for rule_id, wait in waits.items():
            if rule_id in noted and wait < noted[rule_id]:
                self._bring_forward(rule_id, wait)
        if any(noted.get(rule_id) != wait for rule_id, wait in waits.items()):
            with self.store.write() as connection:
                timers.note_waits(connection, waits)
        self._rules_seen = rules

    def _bring_forward(self, rule_id: str, wait: timedelta) -> None:
        """The rule's pending timers due later than their anchor plus `wait`, due then instead."""
        with self.store.read() as connection:
            pending = timers.pending_anchors(connection, rule_id)
        earlier = [(timer_id, anchor_at + wait) for timer_id, anchor_at, due_at in pending if anchor_at + wait < due_at]
        for start in range(0, len(earlier), RESCHEDULE_CHUNK):  # short write transactions beside ingest
            with self.store.write() as connection:
                timers.wait_until(connection, earlier[start:start + RESCHEDULE_CHUNK])
        log.info("timers brought forward to a shortened wait", rule=rule_id, timers=len(earlier))

    def next_due(self) -> datetime | None:
        """When the next timer comes due, as the last `run_once` read it: until then its worker may nap."""
        return self._next_due

    def _fire_alone(self, connection: Connection, timer: DueTimer, now: datetime) -> Recorded:
        """Fire one timer in its own savepoint. A timer that fails keeps its claim and is retried when its lease runs out."""
        try:
            with connection.begin_nested():
                return self._fire_set(connection, [timer], now)
        except Exception:
            log.exception("timer failed to fire", timer_id=timer.timer_id, rule=timer.rule_id)
            return Recorded()

    def _fire_set(self, connection: Connection, due: Sequence[DueTimer], now: datetime) -> Recorded:
        """Decide, route, record and settle the timers.

        The set's caps are read once, not per timer: the rules' from one read of
        their fired decisions (`CapsReadAhead`), the daily one from one count per
        profile. A profile's second timer of the set waits for the next round,
        which reads them again, so its caps count what the first one planned.
        """
        if not due:
            return Recorded()
        settled: list[Settlement] = []
        firings, later = self._prepare(connection, due, settled, now)
        history = self._history(connection, firings)
        restarted = timers.restarted(connection, [firing.timer for firing in firings])
        decided: list[tuple[_Firing, Decision]] = []
        for firing in firings:
            timer, profile = firing.timer, firing.profile
            if timer.timer_id in restarted:
                settled.append(Settlement(timer.timer_id, "superseded"))
                continue
            decision = triggers.evaluate_expired(
                firing.rule, firing.anchor, profile["profile_id"], timer.due_at, history, profile["traits"]
            )
            if isinstance(decision, str):  # the wait ended without a decision, and how
                settled.append(Settlement(timer.timer_id, decision))
                continue
            decided.append((firing, decision))
            settled.append(Settlement(timer.timer_id, "fired", decision.decision_id))
        going = self.responder.messages_going(connection, {d.profile_id for _, d in decided if d.status == "fired"}, now)
        routed = [
            self.responder.route(connection, decision, firing.anchor.as_document(), now, firing.profile,
                                 going.get(decision.profile_id, []))
            for firing, decision in decided
        ]
        recorded = self.responder.record(connection, routed, now)
        timers.settle(connection, settled, now)
        return recorded + self._fire_set(connection, later, now)

    def _prepare(
        self, connection: Connection, due: Sequence[DueTimer], settled: list[Settlement], now: datetime
    ) -> tuple[list[_Firing], list[DueTimer]]:
        """The timers to decide now, and those of a profile already among them (for the next round).

        Each is judged by the rule in force, which may have been edited since
        it was armed: a timer whose rule, anchor or profile is gone, or whose
        anchor the rule's `after` no longer picks, is added to `settled` as
        lapsed; one whose wait the rule now makes longer goes back to wait out
        the rest; one it makes shorter fires, due when the rule now says.
        """
        anchors = touchpoints.get_many(connection, {timer.touchpoint_id for timer in due})
        views = profile_views(connection, {timer.profile_id for timer in due})  # each timer's live profile
        firings: list[_Firing] = []
        later: list[DueTimer] = []
        lengthened: list[tuple[str, datetime]] = []
        profiles: set[str] = set()
        rules = {rule_id: self.rulebook.get(rule_id) for rule_id in {timer.rule_id for timer in due}}
        for timer in sorted(due, key=lambda timer: _firing_order(timer, rules[timer.rule_id])):
            rule, anchor = rules[timer.rule_id], anchors.get(timer.touchpoint_id)
            profile = views.get(timer.profile_id)
            if rule is None or rule.absence is None or anchor is None or profile is None:
                settled.append(Settlement(timer.timer_id, "lapsed"))
            elif not triggers.starts_wait(rule, anchor, profile["traits"]):
                settled.append(Settlement(timer.timer_id, "lapsed"))
            elif (due_at := timer.anchor_at + rule.absence.within) > now:
                lengthened.append((timer.timer_id, due_at))
            elif profile["profile_id"] in profiles:
                later.append(timer)
            else:
                profiles.add(profile["profile_id"])
                firings.append(_Firing(replace(timer, due_at=due_at), rule, anchor, profile))
        timers.wait_until(connection, lengthened)
        return firings, later

    def _history(self, connection: Connection, firings: list[_Firing]) -> History:
        """The store as history, with every timer's possible follow-ups read in one query up front and the
        caps of their rules in one more, when the first asks."""
        if not firings:
            return StoreHistory(connection)
        profiles = {firing.profile["profile_id"] for firing in firings}
        caps = [(firing.timer.due_at - firing.rule.cap.within, firing.rule.id) for firing in firings if firing.rule.cap]
        store = StoreHistory(connection)
        if caps:
            store = CapsReadAhead(connection, profiles, {rule_id for _, rule_id in caps}, min(since for since, _ in caps))
        names = event_names([awaited(firing.rule) for firing in firings])
        since = min(firing.anchor.occurred_at for firing in firings)
        until = max(firing.timer.due_at for firing in firings)
        return ReadAhead(
            store, since, until, names, lambda: touchpoints.events_of(connection, profiles, since, until, names=names)
        )


def _firing_order(timer: DueTimer, rule: RuleSpec | None) -> tuple[datetime, int]:
    """Due first; of timers due at once, the higher priority rule first, so its decision is the one the caps
    let through (as the pipeline plans one event's decisions)."""
    return timer.due_at, -(rule.priority if rule is not None else 0)
