"""What one delivery attempt comes to: the attempt record the delivery log keeps, the status and when to try
again, by the destination's retry policy; and a delivery held back without an attempt.

The engine (`hub.delivery`) claims, sends and renews leases; this module
only judges, so the judgement reads as one piece: masking what a provider
said, the retry budget, what is final.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

import structlog

from connectors.base import Destination
from hub import metrics
from hub.clock import utcnow
from hub.delivery_policy import PolicyBook
from hub.delivery_record import Outcome, unsent_summary
from hub.errors import AuthDeliveryError, DeliveryError, PermanentDeliveryError
from hub.model import Delivery, Identifier, SendResult
from hub.pii import mask_recipient, mask_text
from hub.store.sends_in_flight import AttemptRecord

log = structlog.get_logger(__name__)

# Why a claimed delivery was not sent: the reason label of hub_deliveries_held_back_total. All but destination_gone
# put it back in the outbox for later; destination_gone (and not_configured past its max age) dead-letter it.
HeldBack = Literal[
    "circuit_open", "rate_limit", "in_flight_limit", "not_configured", "provider_asked_wait", "destination_gone"
]



class AttemptOutcomes:
    """Judges attempts by the destinations' policies; `recipient` types an address as routes.yaml does."""

    def __init__(self, policies: PolicyBook, recipient: Callable[[str, str], Identifier | None]) -> None:
        self.policies = policies
        self.recipient = recipient

    def held_back(self, delivery: Delivery, wait: float, reason: HeldBack) -> Outcome:
        """No call was made, so no attempt is counted: counting these as attempts showed traffic to a provider
        the hub had stopped calling."""
        metrics.DELIVERIES_HELD_BACK.labels(destination=delivery.destination_id, reason=reason).inc()
        log.debug("delivery held back", delivery_id=delivery.delivery_id, reason=reason, wait_seconds=round(wait, 3))
        return Outcome(delivery, None, "held_back", utcnow() + timedelta(seconds=wait))

    def parked(self, delivery: Delivery, error: DeliveryError, reason: HeldBack) -> Outcome:
        """Dead-letter a delivery no call was made for, `error` saying why in its log; counted as held back, not as
        a call: hub_delivery_attempts_total counts calls to the destination."""
        metrics.DELIVERIES_HELD_BACK.labels(destination=delivery.destination_id, reason=reason).inc()
        attempt = self._attempt(delivery, error, utcnow(), time.perf_counter(), unsent_summary(delivery, self.recipient))
        log.info("delivery parked without a call", delivery_id=delivery.delivery_id, reason=reason,
                 error_class=error.failure.error_class)
        return Outcome(delivery, attempt, "dead", None)

    def failed(
        self, delivery: Delivery, error: DeliveryError, started_at: datetime, clock: float, request_summary: dict
    ) -> Outcome:
        failure = error.failure
        metrics.DELIVERY_ATTEMPTS.labels(channel=delivery.channel, outcome=error.outcome).inc()
        attempt = self._attempt(delivery, error, started_at, clock, request_summary)
        status, next_at = self._next_status(delivery, error, started_at)
        log.info(
            "delivery attempt failed", delivery_id=delivery.delivery_id, outcome=error.outcome,
            error_class=failure.error_class, status=status,
        )
        return Outcome(
            delivery, attempt, status, next_at, revokes_consent=failure.revokes_consent,
            recipient_gone=failure.recipient_gone, unreachable=failure.unreachable,
        )

    def _attempt(
        self, delivery: Delivery, error: DeliveryError, started_at: datetime, clock: float, request_summary: dict
    ) -> AttemptRecord:
        """The delivery log's record of a failure, the provider's words masked."""
        failure = error.failure
        return AttemptRecord(
            started_at=started_at,
            duration_ms=elapsed_ms(clock),
            outcome=error.outcome,
            provider_message_id=None,
            error_class=failure.error_class,
            error_message=self._masked(delivery, failure.message),
            request_summary=request_summary,
            response_summary=failure.response_summary,
        )

    def _masked(self, delivery: Delivery, text: str) -> str:
        """A provider's error as the delivery log keeps it: the delivery's own recipients in it as the log shows
        them, then any other email or phone masked. A device token quoted back ("Invalid registration token:
        ...") is no email or phone for `mask_text` to find."""
        for recipient in {delivery.target, *delivery.content.get("recipients", ())}:
            if recipient and recipient in text:
                text = text.replace(recipient, mask_recipient(recipient, self.recipient(delivery.channel, recipient)))
        return mask_text(text)

    def _next_status(self, delivery: Delivery, error: DeliveryError, now: datetime) -> tuple[str, datetime | None]:
        if isinstance(error, PermanentDeliveryError):
            return "failed", None
        if isinstance(error, AuthDeliveryError):
            return "dead", None  # parked until credentials are fixed, then replayed
        policy = self.policies.for_destination(delivery.destination_id).retry
        delay = policy.next_delay(delivery.retry_budget_used + 1, delivery.retry_age(now), error.failure.retry_after)
        if delay is None:
            return "dead", None
        return "retrying", now + timedelta(seconds=delay)


def request_summary_of(destination: Destination, delivery: Delivery) -> dict:
    """The destination's summary of the request, its failure classified as a send's: a connector that cannot
    summarise a delivery (content it did not expect) fails that delivery, where raising out of `attempt` failed
    the record of every delivery in the batch, batch after batch."""
    try:
        return destination.request_summary(delivery)
    except Exception as exc:
        raise destination.classify(exc) from exc


def sent(delivery: Delivery, result: object, started_at: datetime, clock: float, request_summary: dict) -> Outcome:
    """The outcome of a send the provider took; TypeError when `send` returned no SendResult (a connector bug),
    which told nothing of the provider's answer."""
    if not isinstance(result, SendResult):
        raise TypeError(f"{delivery.destination_id}: send returned {type(result).__name__}, not a SendResult")
    metrics.DELIVERY_ATTEMPTS.labels(channel=delivery.channel, outcome="sent").inc()
    attempt = AttemptRecord(
        started_at=started_at,
        duration_ms=elapsed_ms(clock),
        outcome="sent",
        provider_message_id=result.provider_message_id,
        error_class=None,
        error_message=None,
        request_summary=request_summary,
        response_summary=result.response_summary,
    )
    return Outcome(delivery, attempt, "sent", None)


def elapsed_ms(clock: float) -> float:
    return round((time.perf_counter() - clock) * 1000, 3)
