"""The timer engine: fires absence rules whose wait ran out ("cart activity, then nothing for 2 minutes").

Timers are armed and cancelled by the pipeline as events arrive; this engine
claims the due ones and fires them as a set, in one transaction: one read
of their anchors, four of their profiles (`profile_views`), one of their
follow-ups, one of their rules' other timers of their profiles, with what
those that fired decided (`timers.ended_by_neighbours`), one of their
rules' caps, one of their daily caps, one insert of decisions, one of
deliveries, one update settling them (each that did not fire with why).
If any timer of the set fails, the set is rolled back to its savepoint and
each timer fires on its own, so one bad timer never holds back its
neighbours; one that fails alone `max_attempts` times is settled `failed`.
A timer whose row cannot be read at all (a time written by hand that the
driver cannot parse) failed the claim, or the look for the next due time,
before any of that: the claim is then made again timer by timer, and such a
timer is settled `failed` at once, its reason the error (`hub.internal`;
`hub.unreadable_timers`).
A crash before the commit leaves the timers pending, to be fired after the
lease by this or another process; a commit makes them settled, so each
fires once. Once committed, each settled timer is counted
(`hub_timers_settled_total`) and each that did not fire is logged with its
reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from hub import metrics, triggers, unreadable_timers
from hub.clock import utcnow
from hub.model import Decision, Touchpoint, WaitEnded
from hub.respond import CapsReadAhead, Recorded, Responder, StoreHistory
from hub.rule_events import awaited
from hub.rule_history import History, ReadAhead
from hub.rulebook import InForce, RuleBook
from hub.rules import RuleSpec
from hub.selectors import event_names
from hub.shortened_waits import ShortenedWaits
from hub.store import Store, inbox, sql, timers, touchpoints
from hub.store.profile_views import profile_views
from hub.store.savepoints import ClaimsAfterFailure, as_set_or_one_by_one
from hub.store.timers import DueTimer, Settlement

log = structlog.get_logger(__name__)

CATCH_UP_RECHECK = timedelta(milliseconds=50)  # a timer held back until the pipeline has seen its possible follow-ups
# A timer whose rule this worker does not have in force (or no longer starting a wait after its event) may have
# been armed by a node that already runs an edit this one has not loaded: rules are files on each machine, and a
# rollout reaches them one by one. Until `RULE_ROLLOUT` after it was armed (not after its event: a phone may
# flush a cart hours late), such a timer is looked at again instead of lapsing for good, each time after as long
# again as it has been armed (at least `RULE_ROLLOUT_RECHECK`): a few looks per timer, even when ops turn off a
# rule with many waiting. After that this worker's rules are taken as the cluster's.
RULE_ROLLOUT = timedelta(minutes=15)
RULE_ROLLOUT_RECHECK = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class _Firing:
    """A due timer with what deciding it needs: its rule, the touchpoint that armed it, the (live) profile."""

    timer: DueTimer
    rule: RuleSpec
    anchor: Touchpoint
    profile: dict[str, Any]


@dataclass(frozen=True)
class _Outcome:
    """What firing a set leaves for after the commit: what it recorded, and how each timer settled.

    Returned per set, never kept in shared state, so a set rolled back and
    fired again timer by timer counts and logs each timer once.
    """

    recorded: Recorded = field(default_factory=Recorded)
    settled: tuple[Settlement, ...] = ()

    def __add__(self, other: _Outcome) -> _Outcome:
        return _Outcome(self.recorded + other.recorded, self.settled + other.settled)


class TimerEngine:
    def __init__(
        self,
        store: Store,
        rulebook: RuleBook,
        responder: Responder,
        *,
        batch_size: int,
        lease: timedelta,
        max_attempts: int,
        deliveries_planned: Callable[[], None],
    ) -> None:
        """`max_attempts`: firings of a timer that may raise before it is settled `failed` (after each, it is tried
        again once its lease runs out)."""
        self.store = store
        self.rulebook = rulebook
        self.responder = responder
        self.batch_size = batch_size
        self.lease = lease
        self.max_attempts = max_attempts
        self._deliveries_planned = deliveries_planned
        self._next_due: datetime | None = None
        self.shortened_waits = ShortenedWaits(store, RULE_ROLLOUT)
        self._in_force_seen = rulebook.in_force()
        self._claims = ClaimsAfterFailure("timer")  # a timer the hub cannot read is set aside, not the set stopped

    def run_once(self, now: datetime | None = None) -> int:
        """Fire one batch of due timers; returns how many were handled. `now` is for simulations."""
        simulated = now
        now = now or utcnow()
        in_force = self.rulebook.in_force()  # one read for both: a reload between two would split them
        self.shortened_waits.follow(now, in_force.rules)
        self._warn_of_rules_gone(in_force)
        with self.store.read() as connection:  # idle polls must not take the write lock from ingest
            readable, self._next_due = unreadable_timers.next_due(connection, now)
            due_now = self._next_due is not None and self._next_due <= now
            waiting = inbox.oldest_waiting(connection) if due_now else None
        if not readable:
            return self._set_aside_next(now)
        if not due_now:
            return 0
        if waiting is not None and waiting <= self._next_due:  # nor while the pipeline catches up (`claim_due`)
            self._next_due = now + CATCH_UP_RECHECK
            return 0
        return self._claims.run(lambda: self._fire_due(simulated))

    def _fire_due(self, simulated: datetime | None) -> int:
        """Claim a set of due timers and fire it; returns how many were claimed, or set aside as unreadable."""
        with self.store.write() as connection:
            # A fired timer counts and plans a profile's deliveries. The lock comes before the claim's row locks,
            # in the pipeline's order (it takes this lock, then settles timers): the other order deadlocks on
            # PostgreSQL whenever a follow-up is processed while its timer fires.
            sql.lock_profiles(connection)
            # Waiting for that lock (a pipeline batch's on PostgreSQL, the write lock on SQLite) can take a while:
            # the lease and what is due count from when this worker holds it, not from its read before.
            now = simulated or utcnow()
            seen_until = inbox.oldest_waiting(connection) or timers.ALL_SEEN
            due, read, set_aside = self._claim(connection, now, seen_until)
            if not due:  # held back while the pipeline catches up (`timers.claim_due`): look again shortly
                self._next_due = now + CATCH_UP_RECHECK
            outcome = sum(as_set_or_one_by_one(
                connection, due, lambda batch: self._fire_set(connection, batch, now),
                lambda timer: self._fire_alone(connection, timer, now), kind="timer",
            ), _Outcome(settled=set_aside))
        outcome.recorded.count()
        _report(outcome.settled, [*due, *read])
        if outcome.recorded.planned:
            self._deliveries_planned()
        return len(due) + len(set_aside)

    def _claim(
        self, connection: Connection, now: datetime, seen_until: datetime
    ) -> tuple[list[DueTimer], list[timers.TimerKey], tuple[Settlement, ...]]:
        """The due timers (`timers.claim_due`); after a claim that raised, claimed one by one
        (`unreadable_timers.claim_one_by_one`), with the keys read and the settlements of those set aside."""
        return self._claims.claim(
            lambda: (timers.claim_due(connection, self.batch_size, now, self.lease, seen_until), [], ()),
            lambda: unreadable_timers.claim_one_by_one(connection, self.batch_size, now, self.lease, seen_until),
        )

    def _set_aside_next(self, now: datetime) -> int:
        """Set aside the timer `unreadable_timers.next_due` could not read (`unreadable_timers.set_aside_first`);
        returns how many were. Left pending, it failed every look, and no timer fired."""
        with self.store.write() as connection:
            keys, set_aside = unreadable_timers.set_aside_first(connection, now)
        _report(set_aside, keys)
        return len(set_aside)

    def next_due(self) -> datetime | None:
        """When the next timer comes due, as the last `run_once` read it, or this worker looks again at shortened
        waits, if sooner: until then its worker may nap."""
        return min(filter(None, (self._next_due, self.shortened_waits.next_look())), default=None)

    def _warn_of_rules_gone(self, in_force: InForce) -> None:
        """At the first run after a reload took rules out of force (removed, renamed, or `enabled: false`), warn
        of the timers each leaves waiting, by rule id: each lapses when it comes due (`RULE_ROLLOUT`), and a
        renamed rule's timers keep the old id, so ops who renamed `cart_abandonment` learn then, not when carts
        go unnudged. Each run otherwise costs one comparison; a reload that took rules out walks the pending
        timers once (`timers.pending_of_rules`)."""
        if in_force is self._in_force_seen:
            return
        gone = self._in_force_seen.by_id.keys() - in_force.by_id.keys()
        self._in_force_seen = in_force
        if not gone:
            return
        with self.store.read() as connection:
            waiting = timers.pending_of_rules(connection, gone)
        for rule_id, count in sorted(waiting.items()):
            log.warning("timers of a rule no longer in force will lapse when due: to keep them, put the rule back "
                        "under this id (a renamed rule does not take them over)", rule=rule_id,
                        reason=in_force.not_in_force(rule_id), timers=count, lapse_after=str(RULE_ROLLOUT))

    def _fire_alone(self, connection: Connection, timer: DueTimer, now: datetime) -> _Outcome:
        """Fire one timer in its own savepoint. A timer that fails keeps its claim and is retried when its lease
        runs out, until it has failed `max_attempts` times: then it is settled `failed` with its error, as an inbox
        row is quarantined, rather than claimed again after every lease, forever."""
        try:
            with connection.begin_nested():
                return self._fire_set(connection, [timer], now)
        except Exception as exc:
            attempt = timer.attempts + 1
            log.exception("timer failed to fire", timer_id=timer.timer_id, rule=timer.rule_id, attempt=attempt)
            error = f"{type(exc).__name__}: {exc}"
            timers.attempt_failed(connection, timer.timer_id, error)
            if attempt < self.max_attempts:
                return _Outcome()
            given_up = Settlement.ended(timer.timer_id, WaitEnded("failed", error))
            timers.settle(connection, [given_up], now)
            return _Outcome(settled=(given_up,))

    def _fire_set(self, connection: Connection, due: Sequence[DueTimer], now: datetime) -> _Outcome:
        """Decide, route, record and settle the timers.

        The set's caps are read once, not per timer: the rules' from one read of
        their fired decisions (`CapsReadAhead`), the daily one from one count per
        profile. A profile's second timer of the set waits for the next round,
        which reads them again, so its caps count what the first one planned.
        """
        if not due:
            return _Outcome()
        settled: list[Settlement] = []
        firings, later = self._prepare(connection, due, settled, now)
        history = self._history(connection, firings)
        ended = timers.ended_by_neighbours(connection, [firing.timer for firing in firings])
        decided: list[tuple[_Firing, Decision]] = []
        for firing in firings:
            timer, profile = firing.timer, firing.profile
            if timer.timer_id in ended:
                settled.append(Settlement.ended(timer.timer_id, ended[timer.timer_id]))
                continue
            decision = triggers.evaluate_expired(
                firing.rule, firing.anchor, profile["profile_id"], timer.due_at, history, profile["traits"]
            )
            if isinstance(decision, WaitEnded):
                settled.append(Settlement.ended(timer.timer_id, decision))
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
        return _Outcome(recorded, tuple(settled)) + self._fire_set(connection, later, now)

    def _prepare(
        self, connection: Connection, due: Sequence[DueTimer], settled: list[Settlement], now: datetime
    ) -> tuple[list[_Firing], list[DueTimer]]:
        """The timers to decide now, and those of a profile already among them (for the next round).

        Each is judged by the rule in force, which may have been edited since
        it was armed: a timer whose rule, anchor or profile is gone, or whose
        anchor the rule's `after` no longer picks, is added to `settled` as
        lapsed, with which; one whose wait the rule now makes longer goes back
        to wait out the rest; one it makes shorter fires, due when the rule
        now says.
        """
        anchors = touchpoints.get_many(connection, {timer.touchpoint_id for timer in due})
        views = profile_views(connection, {timer.profile_id for timer in due})  # each timer's live profile
        firings: list[_Firing] = []
        later: list[DueTimer] = []
        lengthened: list[tuple[str, datetime]] = []
        profiles: set[str] = set()
        held: Counter[tuple[str, str]] = Counter()
        in_force = self._in_force_for(due)
        for timer in sorted(due, key=lambda timer: _firing_order(timer, in_force.by_id.get(timer.rule_id))):
            rule, anchor = in_force.by_id.get(timer.rule_id), anchors.get(timer.touchpoint_id)
            profile = views.get(timer.profile_id)
            gone = _gone(anchor, profile)
            ruled_out = None if gone else _ruled_out(timer, rule, anchor, profile, in_force)
            if ruled_out is not None and (age := now - timer.created_at) < RULE_ROLLOUT:  # held, looked at again
                lengthened.append((timer.timer_id, now + max(age, RULE_ROLLOUT_RECHECK)))
                held[timer.rule_id, ruled_out] += 1
            elif gone or ruled_out:
                settled.append(Settlement.ended(timer.timer_id, WaitEnded("lapsed", gone or ruled_out)))
            elif (due_at := timer.anchor_at + rule.absence.within) > now:
                lengthened.append((timer.timer_id, due_at))
            elif profile["profile_id"] in profiles:
                later.append(timer)
            else:
                profiles.add(profile["profile_id"])
                firings.append(_Firing(replace(timer, due_at=due_at), rule, anchor, profile))
        timers.wait_until(connection, lengthened)
        for (rule_id, why), count in held.items():  # nodes whose rules differ: ops should know while it lasts
            log.warning("timers held: this node's rules do not fire them, another node's may (a rollout under way?)",
                        rule=rule_id, reason=why, timers=count, lapse_after=str(RULE_ROLLOUT))
        return firings, later

    def _in_force_for(self, due: Sequence[DueTimer]) -> InForce:
        """The rules in force for a set of timers, taken once for the set; the file looked at again first if a
        timer's rule is missing: another process's pipeline may have armed it under an edit this worker's next
        look would find."""
        in_force = self.rulebook.in_force()
        if any(timer.rule_id not in in_force.by_id for timer in due) and self.rulebook.reload_if_changed():
            return self.rulebook.in_force()
        return in_force

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


def _gone(anchor: Touchpoint | None, profile: dict[str, Any] | None) -> str | None:
    """Why a due timer can no longer be decided whatever the rules say, if it cannot."""
    if anchor is None:
        return "the event that started the wait is gone"
    if profile is None:
        return "profile gone"
    return None


def _report(settled: Sequence[Settlement], due: Sequence[DueTimer | timers.TimerKey]) -> None:
    """Once committed, each settled timer counted by rule and outcome, and each that did not fire logged with why:
    ops asking why someone never got a nudge find the timer, its rule and profile, and the reason."""
    claimed = {timer.timer_id: timer for timer in due}
    outcomes: Counter[tuple[str, str]] = Counter()
    for settlement in settled:
        timer = claimed[settlement.timer_id]
        outcomes[timer.rule_id, settlement.status] += 1
        if settlement.reason is not None:
            (log.error if settlement.status == "failed" else log.info)(
                "timer ended without firing", timer_id=timer.timer_id, rule=timer.rule_id, profile_id=timer.profile_id,
                outcome=settlement.status, reason=settlement.reason,
            )
    for (rule_id, outcome), count in outcomes.items():
        metrics.TIMERS_SETTLED.labels(rule=rule_id, outcome=outcome).inc(count)


def _ruled_out(
    timer: DueTimer, rule: RuleSpec | None, anchor: Touchpoint, profile: dict[str, Any], in_force: InForce
) -> str | None:
    """Why this worker's rules no longer fire `timer`, armed by `anchor`, if they do not.

    Only an edit of the rule since it armed the timer is judged here: the
    version that armed it judged `after` with the traits of the time, and
    a trait changed since (a plan upgraded by a CRM sync) is for the rule's
    fire-time conditions to weigh. Judged again with today's traits, the
    unedited rule read as edited, the timer was held as for a rollout and
    lapsed.
    """
    if rule is None:
        return in_force.not_in_force(timer.rule_id)
    if timer.rule_version == rule.version:
        return None
    if rule.absence is None or not triggers.starts_wait(rule, anchor, profile["traits"]):
        return "the edited rule no longer waits after this event"
    return None


def _firing_order(timer: DueTimer, rule: RuleSpec | None) -> tuple[datetime, int]:
    """Due first; of timers due at once, the higher priority rule first, so its decision is the one the caps
    let through (as the pipeline plans one event's decisions)."""
    return timer.due_at, -(rule.priority if rule is not None else 0)
