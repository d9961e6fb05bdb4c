"""The one place that wires the stages: inbox row -> touchpoint -> profile -> decisions -> outbox.

A claimed batch is processed in one write transaction (one fsync for the
batch), all its rows inside one savepoint. If any row fails, the batch rolls
back to that savepoint and each row runs again inside its own: a row that
fails there rolls back alone and is quarantined or retried, its neighbours
commit. Everything a row produces (touchpoint, identity changes, decisions,
planned deliveries, the inbox status) commits together, so a crash anywhere
leaves either all of it or none of it, and reprocessing is idempotent thanks
to deterministic ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from itertools import chain
from typing import Any

import structlog
from sqlalchemy import Connection

from hub import identity, metrics, triggers
from hub.clock import END_OF_TIME, utcnow
from hub.erased import anchored_by_erased, without_erased
from hub.errors import EventDropped, ForgottenIdentityError, ItemProblem, MappingError
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.identity_epoch import DEFAULT_CACHE_SIZE, EpochCachedGraph, IdentityCache
from hub.mapping import Mapping
from hub.model import Decision, RawEvent, Resolution, Touchpoint
from hub.normalize import normalize
from hub.pii import address_values, without_values
from hub.respond import Recorded, Responder, StoreHistory
from hub.rule_events import RuleIndex
from hub.rulebook import RuleBook
from hub.store import Store, forget, inbox, timer_arming, touchpoints, withdrawals
from hub.store.traits import trait_time
from hub.store.inbox import InboxRow
from hub.store.savepoints import ClaimsAfterFailure, as_set_or_one_by_one, each_or_set_aside, set_aside_reason

log = structlog.get_logger(__name__)

# What an inbox row set aside as unreadable (quarantined, failed) says to do.
UNREADABLE_ROW = "the hub could not read this event's inbox row; mend the row, then replay its source (touchhub replay)"


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    lease: timedelta
    max_attempts: int
    default_phone_region: str
    identity: IdentityConfig = field(default_factory=lambda: DEFAULT_IDENTITY)
    identity_cache_size: int = DEFAULT_CACHE_SIZE
    backlog_batch_size: int = 0  # claims grow up to this while each comes back full (0: never beyond batch_size)


@dataclass
class _Outcome:
    """What processed rows leave for after their savepoint: rows to mark done (and of them, those a mapping
    dropped, with why), rows processed (a metric), what they recorded, the due times of the timers they armed.

    Collected per set, never in shared state, so a set rolled back and run
    again row by row counts and marks each row once.
    """

    done: list[int] = field(default_factory=list)
    processed: int = 0
    recorded: Recorded = field(default_factory=Recorded)
    armed: list[datetime] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def __add__(self, other: _Outcome) -> _Outcome:
        return _Outcome(self.done + other.done, self.processed + other.processed,
                        self.recorded + other.recorded, self.armed + other.armed, self.dropped + other.dropped)


class Pipeline:
    def __init__(
        self,
        store: Store,
        mappings: MappingType[str, Mapping],
        rulebook: RuleBook,
        responder: Responder,
        config: PipelineConfig,
        deliveries_planned: Callable[[], None],
        timers_armed: Callable[[datetime], None],
    ) -> None:
        """After a batch commits, `deliveries_planned` is called if it planned any, and `timers_armed` with the
        earliest due time it armed (`hub.wakeups`)."""
        self.store = store
        self.mappings = mappings
        self.rulebook = rulebook
        self.responder = responder
        self.config = config
        self._deliveries_planned = deliveries_planned
        self._timers_armed = timers_armed
        self._identities = IdentityCache(config.identity_cache_size)  # identifier owners across batches, exact beside other writers
        self._claim_size = config.batch_size
        self._claims = ClaimsAfterFailure("inbox row")  # a row the hub cannot read is set aside, not the queue stopped

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and process one batch; returns the number of inbox rows handled (set aside ones included).

        `now` is the wall clock unless a simulation (`touchhub triggers test`) runs its own. A claim that
        raised is made again at once, one row at a time (`_claims`).
        """
        handled, outcome = self._claims.run(lambda: self._claim_and_process(now))
        self._claim_size = self._next_claim_size(handled)
        metrics.TOUCHPOINTS_PROCESSED.inc(outcome.processed - len(outcome.dropped))  # a dropped row made no touchpoint
        outcome.recorded.count()
        if outcome.recorded.planned:
            self._deliveries_planned()
        if outcome.armed:
            self._timers_armed(min(outcome.armed))
        return handled

    def _claim_and_process(self, now: datetime | None) -> tuple[int, _Outcome]:
        """One batch's transaction: how many rows it claimed or set aside, and what those it claimed left."""
        with self._identities.cleared_on_error(), self.store.write() as connection, self._identities.locked(connection):
            # The clock is read once the lock on profiles is held (SQLite's write lock; an advisory lock on
            # PostgreSQL): an event ingest committed while this waited for it is then claimed, or is received
            # before the timers this batch arms, which `timers.claim_due` holds back for it.
            now = now or utcnow()
            set_aside: list[int] = []
            rows = self._claims.claim(
                lambda: inbox.claim(connection, self._claim_size, now, self.config.lease),
                lambda: self._claim_one_by_one(connection, now, set_aside),
            )
            outcome = self._process_rows(connection, rows, now) if rows else _Outcome()
            inbox.mark_done(connection, outcome.done, now)
            if outcome.dropped:
                inbox.mark_dropped(connection, outcome.dropped)
        return len(rows) + len(set_aside), outcome

    def _claim_one_by_one(self, connection: Connection, now: datetime, set_aside: list[int]) -> list[InboxRow]:
        """`inbox.claim` after one that raised: each due row claimed in a savepoint of its own, and one that raises
        again quarantined and failed (its id added to `set_aside`).

        A row the claim cannot read (a payload that is not JSON text, a
        received time no calendar has: written by hand or by an older
        version) failed every claim, each took it first again, and no event
        behind it was processed.
        """
        def set_aside_one(inbox_id: int, error: Exception) -> None:
            reason = set_aside_reason(error, UNREADABLE_ROW)
            log.error("an inbox row the hub cannot read was quarantined", inbox_id=inbox_id, reason=reason, exc_info=error)
            inbox.set_aside(connection, inbox_id, now, reason)
            set_aside.append(inbox_id)

        return each_or_set_aside(
            connection, inbox.due_ids(connection, self._claim_size, now),
            lambda inbox_id: [row] if (row := inbox.claim_one(connection, inbox_id, now, self.config.lease)) else [],
            set_aside_one,
        )

    def _next_claim_size(self, claimed: int) -> int:
        """Twice the last claim while claims come back full, up to `backlog_batch_size`; the configured size
        as soon as one does not.

        A full claim means a backlog. Each batch costs a commit (an fsync) and
        fixed reads, which larger batches share: 25 rows a batch drained 3,200
        events/s, 100 rows 3,850, 250 rows 4,100-4,300 (`bench/triggers.py`).
        The price is holding SQLite's write lock longer, which ingest waits
        for, so the claim shrinks again once the pipeline has caught up.
        """
        if claimed < self._claim_size:
            return self.config.batch_size
        return max(self.config.batch_size, min(2 * self._claim_size, self.config.backlog_batch_size))

    def _process_rows(self, connection: Connection, rows: Sequence[InboxRow], now: datetime) -> _Outcome:
        """The rows as a set, or one by one if one fails (the caller holds the profiles lock, the identity cache
        in use)."""
        return sum(as_set_or_one_by_one(
            connection, rows, lambda batch: self._process_set(connection, batch, now),
            lambda row: self._process_alone(connection, row, now), kind="inbox row",
        ), _Outcome())

    def _process_alone(self, connection: Connection, row: InboxRow, now: datetime) -> _Outcome:
        """The row in its own savepoint; a row that fails is quarantined, postponed or (forgotten) dropped."""
        try:
            with connection.begin_nested():
                return self._process_set(connection, [row], now)
        except MappingError as exc:
            self._give_up(connection, row, now, "mapping", str(exc))
        except ForgottenIdentityError:
            # Not quarantined: that would keep the very data the person asked to erase.
            forget.forget_inbox_payloads(connection, [row.id])
            log.info("event of a forgotten person dropped", inbox_id=row.id)
            return _Outcome(done=[row.id])
        except Exception as exc:
            log.exception("pipeline failed on inbox row", inbox_id=row.id, attempt=row.attempts + 1)
            if row.attempts + 1 >= self.config.max_attempts:
                self._give_up(connection, row, now, "pipeline", f"{type(exc).__name__}: {exc}")
            else:
                retry_at = now + timedelta(seconds=2 ** (row.attempts + 1))
                inbox.postpone(connection, row.id, retry_at, f"{type(exc).__name__}: {exc}")
        return _Outcome()

    def _process_set(self, connection: Connection, rows: Sequence[InboxRow], now: datetime) -> _Outcome:
        """Process the rows; raises on the first that fails, leaving the caller to roll them all back."""
        outcome = _Outcome(done=[row.id for row in rows], processed=len(rows))
        for row in rows:
            self._process(connection, row, now, outcome)
        return outcome

    def _process(self, connection: Connection, row: InboxRow, now: datetime, outcome: _Outcome) -> None:
        """Process one row; what it records and the due times of the timers it arms are added to `outcome`."""
        mapping = self.mappings.get(row.source_id)
        if mapping is None:
            raise MappingError(f"source: no mapping is configured for source {row.source_id!r}")
        raw = RawEvent(row.source_id, row.message_id, row.payload)
        try:
            touchpoint = normalize(raw, mapping, row.received_at, self.config.default_phone_region, self.config.identity)
        except EventDropped as exc:
            log.info("event dropped", inbox_id=row.id, reason=str(exc))
            outcome.dropped.append((row.id, str(exc)))
            return
        graph = EpochCachedGraph(connection, self._identities)
        resolution = identity.resolve(touchpoint, graph, now, self.config.identity)
        if resolution.erased:
            if (anchored_by_erased(touchpoint.identifiers, resolution.erased, self.config.identity.rank)
                    and forget.forgotten_since(connection, resolution.erased, row.received_at)):
                # Theirs, taken in before they were forgotten: not a new person's (rolls back what resolve wrote).
                raise ForgottenIdentityError(f"inbox row {row.id}: received before its sender was forgotten")
            touchpoint = without_erased(touchpoint, resolution.erased)
            forget.forget_inbox_payloads(connection, [row.id])
        if resolution.moved:  # a shared device's token went to whoever signed in on it: the first one's pushes to it stop
            for moved in resolution.moved:  # and fall back, as routing would for a person with no device left
                withdrawals.drop_recipient(
                    connection, moved.from_profile_id, moved.identifier.value, now, withdrawals.WITHDRAWN_DEVICE_HANDED_ON,
                    self.responder.fall_back,
                )
        graph.update_traits(
            resolution.profile_id, _traits_of_this_person(touchpoint.traits, resolution),
            trait_time(touchpoint.occurred_at, touchpoint.received_at),
        )
        if touchpoints.insert(connection, touchpoint, resolution.profile_id, row.id):
            in_force = self.rulebook.in_force()  # one edit's rules for the whole event, a reload or not meanwhile
            rules = in_force.index.for_event(touchpoint.event)
            traits = graph.traits(resolution.profile_id)
            changes = triggers.timer_changes(touchpoint, rules, traits)
            timer_arming.follow_event(
                connection, resolution.profile_id, touchpoint.touchpoint_id, touchpoint.occurred_at, now,
                cancel=changes.cancel, arm=changes.arm, versions=changes.versions,
            )
            timer_arming.withdraw_followed_up(  # a follow-up taken in after its timer fired: the nudge, if not gone yet
                connection, resolution.profile_id, touchpoint.event, touchpoint.occurred_at, now,
                [rule_id for rule_id, _ in changes.cancel],
            )
            outcome.armed.extend(due_at for _, due_at in changes.arm)
            rejudged = in_force.index.rejudged_by(touchpoint.event, touchpoint.stage, touchpoint.moment)
            history = triggers.past_of(touchpoint, resolution.profile_id, rules, rejudged, StoreHistory(connection))
            decided = chain(
                ((touchpoint, decision) for decision in triggers.evaluate(touchpoint, resolution.profile_id, rules, history, traits)),
                triggers.rejudge(  # events it arrived after, which it may qualify (a late order, its ticket)
                    touchpoint, resolution.profile_id, rejudged, history, partial(touchpoints.get_many, connection), traits,
                ),
                self._judged_again_after_merge(connection, touchpoint, resolution, traits, in_force.index),
            )
            for at, decision in decided:  # each recorded before the next is judged (rejudge) or routed (daily cap)
                routed = self.responder.route(connection, decision, at.as_document(), now)
                outcome.recorded += self.responder.record(connection, [routed], now)

    def _judged_again_after_merge(
        self, connection: Connection, touchpoint: Touchpoint, resolution: Resolution, traits: MappingType[str, Any],
        index: RuleIndex,
    ) -> Iterator[tuple[Touchpoint, Decision]]:
        """Decisions a merge makes hold: each of the merged profile's events a rule's `recent` looks for, taken as
        evidence come late for the events on the other side (`triggers.rejudge`).

        A merge is evidence arriving late in a body: Sam bought on the phone
        before logging in there, and opened a ticket on the web; when the
        phone's login is taken in after the ticket, the order joins Sam's
        profile only then. Taken in the order they happened, the ticket
        finds the order. Every event the rules look for since their longest
        window before the merging event is evidence (both sides', since the
        merge cannot tell them apart now), for the events after the merging
        one only: those before it were someone else's when they happened, and
        in-order arrival would not have judged them with it. Decisions
        already made keep their ids, so none is made twice. Only merges pay
        for this.
        """
        if not resolution.merged_profile_ids or (within := index.longest_evidence_window()) is None:
            return
        stored = partial(touchpoints.get_many, connection)
        history = StoreHistory(connection)
        since = touchpoint.occurred_at - within
        found = stored([  # only the events some rule judges again by: the others would make nothing
            doc["touchpoint_id"] for doc in history.events(resolution.profile_id, since, END_OF_TIME, None)
            if index.rejudged_by(doc["event"], doc["stage"], doc["moment"])
        ])
        for evidence in sorted(found.values(), key=lambda tp: tp.occurred_at):
            rejudged = index.rejudged_by(evidence.event, evidence.stage, evidence.moment)
            for at, decision in triggers.rejudge(evidence, resolution.profile_id, rejudged, history, stored, traits, after=touchpoint):
                decision.evidence["merged_by"] = {"touchpoint_id": touchpoint.touchpoint_id, "event": touchpoint.event}
                yield at, decision

    def _give_up(self, connection: Connection, row: InboxRow, now: datetime, stage: str, reason: str) -> None:
        field, _, detail = reason.partition(": ")
        problems = [ItemProblem(None, field if detail else "(event)", detail or reason)]
        inbox.give_up(connection, row.id, row.source_id, _json_bytes(row.payload), stage, reason, problems, now)
        log.warning("event quarantined", inbox_id=row.id, stage=stage, reason=reason)


def _traits_of_this_person(traits: dict[str, Any], resolution: Resolution) -> dict[str, Any]:
    """The event's traits without the addresses it carried that resolution refused as another person's: Ana's
    identify with Bo's email (a family address, a typo) is not linked to Bo, and her `email` trait must not become
    his either, or her CRM Lead and her emails go to him. An unmerge drops such traits too (`identity_repair`)."""
    theirs = [refused.identifier for refused in resolution.refused if refused.profile_id not in (None, resolution.profile_id)]
    return without_values(traits, address_values(theirs)) if theirs else traits


def _json_bytes(payload: object) -> bytes:
    return json.dumps(payload, default=str).encode("utf-8")
