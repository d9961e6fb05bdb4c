"""Delivery workers: claim due outbox rows, call destinations, log every attempt.

Sends run on a bounded thread pool (provider SDKs are blocking); the outcome
of a whole batch is written back in one transaction. A crash between a send
and its record means the row's lease expires and it is sent again: delivery
is at-least-once, and idempotency keys let providers that accept them
collapse the duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from connectors.base import Destination
from hub import metrics
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.model import Delivery
from hub.pii import mask_text
from hub.retry import RetryPolicy
from hub.store import Store, outbox
from hub.store.outbox import AttemptRecord

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    delivery: Delivery
    attempt: AttemptRecord
    status: str
    next_attempt_at: datetime | None


class DeliveryEngine:
    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination],
        policy: RetryPolicy,
        *,
        batch_size: int,
        lease: timedelta,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.destinations = destinations
        self.policy = policy
        self.batch_size = batch_size
        self.lease = lease
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")

    def run_once(self) -> int:
        with self.store.write() as connection:
            due = outbox.claim_due(connection, self.batch_size, utcnow(), self.lease)
        if not due:
            return 0
        outcomes = list(self._pool.map(self.attempt, due))
        with self.store.write() as connection:
            for outcome in outcomes:
                outbox.record_attempt(
                    connection, outcome.delivery, outcome.attempt, status=outcome.status,
                    next_attempt_at=outcome.next_attempt_at,
                )
        return len(due)

    def attempt(self, delivery: Delivery) -> Outcome:
        """Send once and decide the delivery's next status; never raises."""
        started_at = utcnow()
        clock = time.perf_counter()
        destination = self.destinations.get(delivery.destination_id)
        request_summary = destination.request_summary(delivery) if destination else {"target": mask_text(delivery.target)}
        try:
            if destination is None:
                raise AuthDeliveryError(
                    DeliveryFailure("config.unknown_destination", f"no destination {delivery.destination_id!r} is configured")
                )
            result = destination.send(delivery)
        except DeliveryError as exc:
            return self._failed(delivery, exc, started_at, clock, request_summary)
        except Exception as exc:  # a connector bug must not lose the delivery: retry it like an outage
            log.exception("destination raised an unexpected error", destination=delivery.destination_id)
            failure = DeliveryFailure(f"unexpected.{type(exc).__name__}", str(exc))
            return self._failed(delivery, RetryableDeliveryError(failure), started_at, clock, request_summary)
        metrics.DELIVERY_ATTEMPTS.labels(channel=delivery.channel, outcome="sent").inc()
        attempt = AttemptRecord(
            started_at=started_at,
            duration_ms=_elapsed_ms(clock),
            outcome="sent",
            provider_message_id=result.provider_message_id,
            error_class=None,
            error_message=None,
            request_summary=request_summary,
            response_summary=result.response_summary,
        )
        return Outcome(delivery, attempt, "sent", None)

    def _failed(
        self, delivery: Delivery, error: DeliveryError, started_at: datetime, clock: float, request_summary: dict
    ) -> Outcome:
        failure = error.failure
        metrics.DELIVERY_ATTEMPTS.labels(channel=delivery.channel, outcome=error.outcome).inc()
        attempt = AttemptRecord(
            started_at=started_at,
            duration_ms=_elapsed_ms(clock),
            outcome=error.outcome,
            provider_message_id=None,
            error_class=failure.error_class,
            error_message=mask_text(failure.message),
            request_summary=request_summary,
            response_summary=failure.response_summary,
        )
        status, next_at = self._next_status(delivery, error, started_at)
        log.info(
            "delivery attempt failed", delivery_id=delivery.delivery_id, outcome=error.outcome,
            error_class=failure.error_class, status=status,
        )
        return Outcome(delivery, attempt, status, next_at)

    def _next_status(self, delivery: Delivery, error: DeliveryError, now: datetime) -> tuple[str, datetime | None]:
        if isinstance(error, PermanentDeliveryError):
            return "failed", None
        if isinstance(error, AuthDeliveryError):
            return "dead", None  # parked until credentials are fixed, then replayed
        delay = self.policy.next_delay(delivery.attempts + 1, now - delivery.created_at, error.failure.retry_after)
        if delay is None:
            return "dead", None
        return "retrying", now + timedelta(seconds=delay)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for destination in self.destinations.values():
            destination.close()


def _elapsed_ms(clock: float) -> float:
    return round((time.perf_counter() - clock) * 1000, 3)
