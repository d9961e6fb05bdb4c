"""How a delivery worker records what became of its sends: attempts, statuses, and what providers said back.

The record of a batch is one transaction with the next claim. It also takes
the locks every writer of these rows takes, in one order (message ids, then
profiles, then deliveries: `hub.provider_reports`), applies the Twilio
reports that came before their sends were recorded (`hub.store.held_reports`)
and feeds back a provider's refusal (consent; a person it cannot reach there:
the fallback) or a dead address. If the batch's record fails, each outcome is
recorded in a savepoint of its own, so one row the database refuses costs only
its own delivery, never the batch sent again after every lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

import structlog
from sqlalchemy import Connection

from connectors.base import CallbackReceiver, Destination
from hub import provider_reports
from hub.clock import utcnow
from hub.consent import lock_before_deliveries, set_consent
from hub.model import FALLBACK, Delivery, Identifier, ProviderStatus
from hub.pii import mask_recipient
from hub.store import Store, held_reports, outbox, sends_in_flight
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.sends_in_flight import AttemptRecord, AttemptResult
from hub.store.withdrawals import FallBack

log = structlog.get_logger(__name__)
T = TypeVar("T")
Recipient = Callable[[str, str], Identifier | None]  # `Router.recipient`

# The error class of an attempt logged without what the provider said, since the database refused that.
RECORD_FAILED = "hub.record_failed"


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery.

    `attempt` is None when the delivery was held back without a send; it then
    keeps its status and only its due time moves to `next_attempt_at`.
    """

    delivery: Delivery
    attempt: AttemptRecord | None
    status: str
    next_attempt_at: datetime | None
    revokes_consent: bool = False
    recipient_gone: str | None = None  # why the address left the profile (`DeliveryFailure.recipient_gone`)
    unreachable: bool = False  # refused for a reason of its person, their address kept (`DeliveryFailure.unreachable`)


def unsent_summary(delivery: Delivery, recipient: Recipient) -> dict[str, str]:
    """The request summary of a delivery no destination took: its target masked as the delivery log masks it
    (a push token cut short, not shown whole)."""
    return {"target": mask_recipient(delivery.target, recipient(delivery.channel, delivery.target))}


class AttemptRecorder:
    """Records a delivery engine's outcomes in the store."""

    def __init__(
        self, store: Store, destinations: Mapping[str, Destination], recipient: Recipient,
        leases: Mapping[str, datetime], fall_back: FallBack | None = None,
    ) -> None:
        """`leases`: the lease the caller set on each delivery it claimed (`claimed_until`, by delivery id), read
        at each record: a delivery whose row has another lease now is another worker's to move on
        (`sends_in_flight.record_attempts`); one not in it is recorded whatever its lease. `fall_back` plans a failed
        delivery's fallback when its addresses turned out dead (None: never)."""
        self.store = store
        self.destinations = destinations
        self.recipient = recipient
        self.leases = leases
        self.fall_back = fall_back

    def write_back(self, outcomes: list[Outcome], then: Callable[[Connection], T]) -> T | None:
        """Record the outcomes, and `then` (the next claim), in one transaction; returns what `then` returned.

        If that fails, the outcomes are recorded again in a new one, each in a
        savepoint of its own (`_record_one_by_one`), and `then` is left to the
        next run (None): the failure may have been its own (a claim that
        fails), and run in the same transaction again it rolled the records
        back with it. Until a record succeeds the outcomes stay the caller's
        to record: dropped, their deliveries (sent, some of them) were sent
        again when their leases ran out.
        """
        try:
            with self.store.write() as connection:
                self.record(connection, outcomes)
                return then(connection)
        except Exception:
            if not outcomes:
                raise
            log.exception("recording a batch of attempts failed; recording them one by one", outcomes=len(outcomes))
        with self.store.write() as connection:
            self._record_one_by_one(connection, outcomes)
        return None

    def record(self, connection: Connection, outcomes: Sequence[Outcome]) -> None:
        """The outcomes' records (`_write`), after the locks they need (`_lock`), with the reports that came
        before their sends."""
        self._write(connection, outcomes, self._lock(connection, outcomes, take_reports=True))

    def _record_one_by_one(self, connection: Connection, outcomes: Sequence[Outcome]) -> None:
        """`record`, each outcome in a savepoint of its own after the locks of all of them; one whose record
        fails again is written `_unrecorded`, so it costs only its own delivery (the reports held for its
        message stay held: the savepoint took them back)."""
        self._lock(connection, outcomes, take_reports=False)
        for outcome in outcomes:
            try:
                with connection.begin_nested():
                    self._write(connection, [outcome], held_reports.take(connection, self._sent_with_reports([outcome])))
            except Exception as exc:
                log.exception("recording a delivery's attempt failed; it is logged without the provider's answer",
                              delivery_id=outcome.delivery.delivery_id)
                self._write(connection, self._unrecorded(outcome, exc), [])

    def _lock(
        self, connection: Connection, outcomes: Sequence[Outcome], *, take_reports: bool
    ) -> list[tuple[str, ProviderStatus]]:
        """Take the locks the outcomes' records need, in the order every writer takes them (`hub.provider_reports`):
        their messages', for reports that came before the send (`hub.store.held_reports`), then the profiles',
        when consent may change. Returns the reports held for those messages, taken now if `take_reports`;
        otherwise the caller takes them later, and the profiles' lock is taken whatever they say."""
        reported = self._sent_with_reports(outcomes)
        held_reports.lock_messages(connection, reported)
        early = held_reports.take(connection, reported) if take_reports else []
        lock_before_deliveries(connection, not take_reports or any(
            outcome.revokes_consent or outcome.recipient_gone or self._may_fall_back(outcome) for outcome in outcomes
        ) or any(
            provider_reports.changes_people(report, self._receiver(destination_id).cannot_reach, self.fall_back)
            for destination_id, report in early
        ))
        return early

    def _unrecorded(self, outcome: Outcome, error: Exception) -> list[Outcome]:
        """The outcome as the log can take it when its own record failed: its attempt and the status that
        leads to (a sent message stays sent: sending it again would reach the person twice), without what
        the provider said or what that feeds back (consent, addresses). A held-back delivery has nothing to
        log: it is claimed again when its lease runs out, as it would have been after its wait."""
        if outcome.attempt is None:
            return []
        attempt = replace(
            outcome.attempt, provider_message_id=None, error_class=RECORD_FAILED,
            error_message=f"the hub could not record this attempt as the provider answered it ({type(error).__name__}; "
                          "the worker's log has the error); its outcome is kept, without the provider's answer",
            request_summary=unsent_summary(outcome.delivery, self.recipient), response_summary={},
        )
        return [Outcome(outcome.delivery, attempt, outcome.status, outcome.next_attempt_at)]

    def _write(
        self, connection: Connection, outcomes: Sequence[Outcome], early: list[tuple[str, ProviderStatus]]
    ) -> None:
        """Each outcome: its attempt logged and its new status, or its wait (held back); the `early` reports on
        the messages sent applied; consent a provider refused, and addresses it said do not exist."""
        now = utcnow()
        leases = self.leases
        sends_in_flight.record_attempts(connection, [
            AttemptResult(o.delivery, o.attempt, o.status, o.next_attempt_at, leases.get(o.delivery.delivery_id))
            for o in outcomes if o.attempt
        ])
        for destination_id, report in early:
            provider_reports.apply(connection, destination_id, [report], now, self.recipient,
                                   cannot_reach=self._receiver(destination_id).cannot_reach, fall_back=self.fall_back)
        for outcome in outcomes:
            delivery = outcome.delivery
            if outcome.attempt is None:
                assert outcome.next_attempt_at is not None
                outbox.defer(connection, delivery.delivery_id, outcome.next_attempt_at, lease=leases.get(delivery.delivery_id))
            if outcome.revokes_consent:
                through = self.recipient(delivery.channel, delivery.target)
                set_consent(connection, delivery.profile_id, delivery.channel, False, now, "refused by provider", through)
            if outcome.recipient_gone and (address := self.recipient(delivery.channel, delivery.target)) is not None:
                SqlIdentityGraph(connection).detach(address.type, [address.value], outcome.recipient_gone)
            if self._may_fall_back(outcome):
                assert self.fall_back is not None and outcome.attempt is not None  # `_may_fall_back` said so
                why = f"{outcome.attempt.error_class}: {outcome.attempt.error_message}"
                self.fall_back(connection, delivery, why, now, unreachable=outcome.unreachable)

    def _may_fall_back(self, outcome: Outcome) -> bool:
        """A failure for good of a delivery whose action has fallbacks left: if its addresses turned out dead
        (FCM's dead tokens are gone already, a bounced email goes above), the provider refused it as its person
        opted out (consent is revoked above, before this) or as one it cannot reach there (`unreachable`: a
        landline), the next channel is planned, under the profiles' lock as planning takes it."""
        return (
            self.fall_back is not None and outcome.status == "failed" and FALLBACK in outcome.delivery.content
            and outcome.attempt is not None and outcome.attempt.error_class != RECORD_FAILED  # `_unrecorded`: no feedback
        )

    def _receiver(self, destination_id: str) -> CallbackReceiver:
        """The destination a held report is about: one that reports later (`_sent_with_reports` took only those)."""
        receiver = self.destinations[destination_id]
        assert isinstance(receiver, CallbackReceiver)
        return receiver

    def _sent_with_reports(self, outcomes: Sequence[Outcome]) -> list[held_reports.SentMessage]:
        """The messages sent to destinations that report on them later (callbacks), by their provider ids."""
        return [
            (o.delivery.destination_id, o.attempt.provider_message_id)
            for o in outcomes
            if o.attempt is not None and o.attempt.provider_message_id
            and isinstance(self.destinations.get(o.delivery.destination_id), CallbackReceiver)
        ]
