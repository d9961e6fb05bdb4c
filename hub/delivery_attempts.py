"""One delivery's attempt: whether its destination may take it now, and if so the send.

The delivery engine (`hub.delivery`) claims batches and records them; each
claimed delivery comes here, on the engine's loop. A destination's circuit
breaker, rate limit, limit of sends in flight and a wait it asked for
(Retry-After) only ever make a delivery wait (`AttemptOutcomes.held_back`:
back to the outbox with a later due time, no attempt logged); a destination
this process has no settings for puts it back for `UNCONFIGURED_PAUSE_SECONDS`
until its max age dead-letters it. A destination that answered it is gone
(a webhook's 410) has its later deliveries parked without a call.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

from connectors.base import Destination
from hub.attempt_outcomes import AttemptOutcomes, request_summary_of, sent
from hub.clock import utcnow
from hub.delivery_policy import PolicyBook
from hub.delivery_record import Outcome, unsent_summary
from hub.errors import (
    UNEXPECTED, AuthDeliveryError, DeliveryError, DeliveryFailure, GoneDeliveryError, RetryableDeliveryError,
    unexpected_failure,
)
from hub.model import Delivery, Identifier
from hub.throttle import Gone

log = structlog.get_logger(__name__)

# A rate-limited send waits (holding its place among the sends in flight) at most
# this long; a longer wait puts the delivery back in the outbox instead.
MAX_INLINE_WAIT_SECONDS = 1.0
# How long a run of the engine (`hub.delivery`) waits for the sends in flight before it records those finished and
# claims more: longer than a batch of answers takes under load (tens of ms), short against the latency a moment
# allows. A delivery claimed beyond its destination's `max_in_flight` looks for a place as long.
SEND_WAIT_SECONDS = 0.05
# How often a send claimed beyond its destination's `max_in_flight` looks for a place, for SEND_WAIT_SECONDS.
PLACE_LOOK_SECONDS = 0.005
# How long a delivery to a destination not configured in this process goes back to the outbox for: a node
# that has the settings (polling every HUB_WORKER_POLL_SECONDS) takes it meanwhile, and this one looks at it
# again about once a minute, not on every poll; left due, every claim walked past such rows (ix_deliveries_due).
UNCONFIGURED_PAUSE_SECONDS = 60.0
# The error class of a delivery dead-lettered because no process had its destination's settings within its max age.
UNKNOWN_DESTINATION = "config.unknown_destination"
# The error class of a delivery parked without a call because its destination had answered an earlier one it is gone.
DESTINATION_GONE = "hub.destination_gone"


class DeliveryAttempts:
    def __init__(
        self, destinations: Mapping[str, Destination], policies: PolicyBook, recipient: Callable[[str, str], Identifier | None],
    ) -> None:
        self.destinations = destinations
        self.policies = policies
        self.recipient = recipient
        self._outcomes = AttemptOutcomes(policies, recipient)
        self._sends_to: Counter[str] = Counter()  # sends in flight by destination id, for `max_in_flight`
        self._said_unconfigured: set[str] = set()  # destinations not configured here, logged once each

    def at_their_limit(self) -> list[str]:
        """The destinations with as many sends in flight as their policy's `max_in_flight`."""
        at_limit = []
        for destination_id, sending in self._sends_to.items():
            limit = self.policies.for_destination(destination_id).max_in_flight
            if limit is not None and sending >= limit:
                at_limit.append(destination_id)
        return at_limit

    async def attempt(self, delivery: Delivery) -> Outcome:
        """Send once, or hold the delivery back, and decide its next status; never raises.

        The circuit breaker admits a delivery before the rate limit gives it a
        token: taken first, a token was spent by every delivery an open
        breaker then held back, and once it closed the destination was
        throttled below its limit. Admitted, a delivery counts as in flight,
        its wait for its token included.

        What the destination itself said comes first: gone, or a wait it
        asked for, holds a delivery back before it takes a place among the
        sends in flight or the breaker's probe.
        """
        destination = self.destinations.get(delivery.destination_id)
        if destination is None:
            return self._not_configured(delivery)
        policy = self.policies.for_destination(delivery.destination_id)
        if (gone := policy.gone.parking(delivery.retry_from)) is not None:
            return self._outcomes.parked(delivery, parked_as_gone(delivery, gone), "destination_gone")
        if (asked := policy.provider_wait.remaining()) > 0:
            return self._outcomes.held_back(delivery, asked, "provider_asked_wait")
        if policy.max_in_flight is not None and not await self._place_among(delivery.destination_id, policy.max_in_flight):
            return self._outcomes.held_back(delivery, SEND_WAIT_SECONDS, "in_flight_limit")
        wait = policy.breaker.admit()
        if wait > 0:
            return self._outcomes.held_back(delivery, wait, "circuit_open")
        pause: float | None = None  # no rate limit
        if policy.rate_limit is not None:
            pause = policy.rate_limit.reserve(MAX_INLINE_WAIT_SECONDS)
            if pause is None:
                policy.breaker.release()  # no await since `admit`: a probe it granted was this delivery's
                return self._outcomes.held_back(delivery, policy.rate_limit.wait_time(), "rate_limit")
        self._sends_to[delivery.destination_id] += 1  # no await since the place was found: it is exact
        try:
            if pause is not None:
                # Of 0 too: the loop takes in first what its pooled connections heard while it idled (a provider
                # closing a keep-alive one); without it the send took a closed one (network.ClientOSError).
                await asyncio.sleep(pause)
            outcome = await self._send(delivery, destination)
        finally:
            self._sends_to[delivery.destination_id] -= 1
        assert outcome.attempt is not None
        policy.breaker.record(healthy=outcome.attempt.outcome != "retryable")
        if outcome.status == "sent":
            policy.gone.clear()
        return outcome

    async def _place_among(self, destination_id: str, limit: int) -> bool:
        """Whether the destination has fewer than `limit` sends in flight, now or within `SEND_WAIT_SECONDS`.

        A claim passes over destinations at their limit, but one claim may
        hold more of a destination's deliveries than it has places left (a
        timer set plans ~40 webhooks at once). Those wait here for a place:
        with a receiver answering in milliseconds one frees at once, where
        putting them back in the outbox delayed them 50 ms and cost two
        statements each. Behind a slow receiver they go back after the wait,
        freeing the engine's places they hold. Polled every 5 ms: only the
        few deliveries a claim took beyond the limit look, for 50 ms at most.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_WAIT_SECONDS
        while self._sends_to[destination_id] >= limit:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(PLACE_LOOK_SECONDS)
        return True

    def _not_configured(self, delivery: Delivery) -> Outcome:
        """Put a delivery to a destination this process has no settings for back for `UNCONFIGURED_PAUSE_SECONDS`
        (no attempt spent), for a process that has them; past its destination's max age, dead-letter it.

        Aged as any held-back delivery (`Delivery.retry_age`: since it was
        first due or last replayed), and never held past that age: with no
        process ever configured for it (a quick start without Salesforce, whose
        support rule updates the CRM) it is settled then, not left due for ever.
        """
        self._say_not_configured(delivery.destination_id)
        now = utcnow()
        max_age = self.policies.for_destination(delivery.destination_id).retry.max_age
        left = (max_age - delivery.retry_age(now)).total_seconds()
        if left > 0:
            return self._outcomes.held_back(delivery, min(UNCONFIGURED_PAUSE_SECONDS, left), "not_configured")
        error = AuthDeliveryError(DeliveryFailure(
            UNKNOWN_DESTINATION,
            f"no delivery worker had settings for destination {delivery.destination_id!r} within its max age "
            f"({max_age.total_seconds():g} s: HUB_DELIVERY_MAX_AGE_SECONDS, or its delivery.yaml retry.max_age): set "
            "that destination's HUB_* settings (see .env.example) on a delivery worker, then replay this delivery",
        ))
        return self._outcomes.parked(delivery, error, "not_configured")

    def _say_not_configured(self, destination_id: str) -> None:
        """Log, once per destination, that its deliveries wait here for a process with its settings."""
        if destination_id in self._said_unconfigured:
            return
        self._said_unconfigured.add(destination_id)
        log.info(
            "a delivery's destination is not configured in this process: its deliveries go back to the outbox for "
            "a process with its settings (HUB_*, see .env.example), and are dead-lettered past its max age",
            destination=destination_id, pause_seconds=UNCONFIGURED_PAUSE_SECONDS,
        )

    async def _send(self, delivery: Delivery, destination: Destination) -> Outcome:
        started_at = utcnow()
        clock = time.perf_counter()
        request_summary: dict | None = None  # until the destination has summarised the request
        try:
            request_summary = request_summary_of(destination, delivery)
            return sent(delivery, await destination.deliver_async(delivery), started_at, clock, request_summary)
        except Exception as exc:  # a DeliveryError, or a connector bug: its `classify` raised, it returned no SendResult
            error = exc if isinstance(exc, DeliveryError) else RetryableDeliveryError(unexpected_failure(exc))
            if error.failure.error_class.startswith(UNEXPECTED):  # a connector bug: retried, and loud
                log.exception("destination raised an unexpected error", destination=delivery.destination_id)
            summary = unsent_summary(delivery, self.recipient) if request_summary is None else request_summary
            self._heed(delivery, error)
            return self._outcomes.failed(delivery, error, started_at, clock, summary)

    def _heed(self, delivery: Delivery, error: DeliveryError) -> None:
        """What a destination's refusal of one delivery says of every delivery to it: it is gone, or wants quiet
        for a while (a Retry-After with a retryable answer, unless it concerns only this delivery's recipient:
        FCM's rate for one device held back every push to everyone; the delivery's own retry still waits it)."""
        policy = self.policies.for_destination(delivery.destination_id)
        failure = error.failure
        if isinstance(error, GoneDeliveryError):
            policy.gone.mark(Gone(utcnow(), delivery.delivery_id, failure))
        elif (isinstance(error, RetryableDeliveryError) and failure.retry_after
              and failure.retry_after_scope == "destination"):
            policy.provider_wait.ask(failure.retry_after)


def parked_as_gone(delivery: Delivery, gone: Gone) -> GoneDeliveryError:
    """Why a delivery to a gone destination was not sent: what the destination answered the delivery that found it
    gone, with that delivery's id, so the log's reader fixes the endpoint once and replays them all."""
    return GoneDeliveryError(DeliveryFailure(
        DESTINATION_GONE,
        f"not sent: {delivery.destination_id} answered an earlier delivery ({gone.delivery_id}) at "
        f"{gone.since.isoformat(timespec='seconds')} that it is gone: {gone.failure.message}",
    ))
