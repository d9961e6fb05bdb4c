"""Per-destination protection of providers: a circuit breaker, a token bucket, the wait a provider asked for, and
a destination that said it is gone.

All live in the memory of one process. A breaker is a fast local reaction
to an outage (every worker process learns on its own that Twilio is down,
after a handful of failures), and a rate limit shared by several processes is
set per process (divide the provider's limit by the number of workers).
None but the gone mark ever fails a delivery: a delivery they hold back waits
in the outbox and is tried when they let it through. A destination's own word
(`ProviderWait`, `GoneMark`) is learnt by each process from one answer of
its own, as an outage is by its breaker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from hub import metrics
from hub.errors import DeliveryFailure

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures -> half-open probe after `reset_after`.

    While open, `admit` tells callers how long to wait. After `reset_after`
    one caller is let through as a probe; its success closes the breaker, its
    failure opens it again for another `reset_after`. A probe with no verdict
    after `reset_after` is abandoned and the next caller probes: one whose
    caller never recorded it (its send raised, or was cancelled) left the
    breaker half-open for the life of the process, holding back every later
    call. Only outage-like failures (retryable errors) should be recorded as
    failures: a refused phone number says nothing about the provider's health.
    """

    def __init__(self, name: str, failure_threshold: int, reset_after: float, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._probe_sent_at = 0.0
        self._open_gauge = metrics.CIRCUIT_OPEN.labels(destination=name)
        self._open_gauge.set(0)  # a new breaker starts closed; the series exists before the first outage

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self._probe_in_flight else "open"

    def admit(self) -> float:
        """0 when a call may go ahead now; otherwise the seconds to wait before asking again."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            now = self._clock()
            if self._probe_in_flight:
                if now < self._probe_sent_at + self.reset_after:
                    # Check back soon: the probe's answer may close the breaker at any moment.
                    return min(self.reset_after, 1.0)
                log.warning("circuit probe gave no verdict; abandoned, sending another", destination=self.name,
                            waited_seconds=round(now - self._probe_sent_at, 3))
            elif (remaining := self._opened_at + self.reset_after - now) > 0:
                return remaining
            self._probe_in_flight, self._probe_sent_at = True, now
            log.info("circuit half-open: sending a probe", destination=self.name)
            return 0.0

    def release(self) -> None:
        """Give back an admission no call followed (a rate limit held the delivery back): a probe it was goes
        to the next caller, where left pending it held every call back until abandoned after `reset_after`.
        Call it before anyone else may ask `admit`."""
        with self._lock:
            self._probe_in_flight = False

    def record(self, healthy: bool) -> None:
        """Report how an admitted call went: `healthy` unless it failed in an outage-like way."""
        with self._lock:
            if healthy:
                if self._opened_at is not None:
                    log.info("circuit closed", destination=self.name)
                    self._open_gauge.set(0)
                self._failures, self._opened_at, self._probe_in_flight = 0, None, False
                return
            self._failures += 1
            if self._probe_in_flight or self._failures >= self.failure_threshold:
                if self._opened_at is None or self._probe_in_flight:
                    log.warning("circuit open", destination=self.name, consecutive_failures=self._failures)
                    self._open_gauge.set(1)
                self._opened_at, self._probe_in_flight = self._clock(), False


class TokenBucket:
    """At most `rate` calls a second on average, with bursts of up to `burst` calls."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def reserve(self, max_wait: float) -> float | None:
        """Take a token: the seconds to sleep before using it, or None (nothing taken) if that exceeds `max_wait`."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            wait = max(0.0, (1 - self._tokens) / self.rate)
            if wait > max_wait:
                return None
            self._tokens -= 1
            return wait

    def wait_time(self) -> float:
        """Seconds until a token will be free, if nobody else takes it first."""
        with self._lock:
            tokens = min(self.burst, self._tokens + (self._clock() - self._updated) * self.rate)
            return max(0.0, (1 - tokens) / self.rate)


class ProviderWait:
    """The quiet a destination asked for (Retry-After on a 429 or 503), kept for every delivery to it.

    A Retry-After delayed only the delivery it answered: every other one to
    the destination kept calling, got its own 429 and spent its retry budget
    on a provider that had asked for quiet (Svix and Novu pause the endpoint
    instead). A wait is cut to `longest`, so a bogus header cannot stall a
    destination for ever; a shorter one asked later never shortens a longer
    one in force.
    """

    def __init__(self, name: str, longest: float, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.longest = longest
        self._clock = clock
        self._lock = threading.Lock()
        self._until = 0.0  # clock time before which nothing is sent; read without the lock (one float)

    def remaining(self) -> float:
        """0 when a call may go ahead now; otherwise the seconds left of the wait asked for."""
        return max(0.0, self._until - self._clock())

    def ask(self, seconds: float) -> None:
        """The destination asked that nothing be sent for `seconds` (at most `longest`)."""
        with self._lock:
            until = self._clock() + min(seconds, self.longest)
            if until <= self._until:
                return
            self._until = until
        log.info("destination asked for a wait: its deliveries are held back", destination=self.name,
                 wait_seconds=round(min(seconds, self.longest), 3), asked_seconds=seconds)


@dataclass(frozen=True)
class Gone:
    """When a destination answered that it is gone, to which delivery, and what it said."""

    since: datetime
    delivery_id: str
    failure: DeliveryFailure


class GoneMark:
    """A destination that answered it is gone (a webhook's 410 Gone): its later deliveries are parked without a call.

    Each one made its own call and got its own 410, where Standard Webhooks
    asks a sender to stop, and Svix disables the endpoint. The mark holds
    until the destination takes a delivery again (a replay sent after the
    mark goes: ops replay once the receiver is back), or the process
    restarts: a destination's URL is a setting, read at start only, so a new
    URL starts unmarked.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._gone: Gone | None = None

    def mark(self, gone: Gone) -> None:
        if self._gone is None:
            log.warning("destination is gone: its later deliveries are parked without a call until replayed",
                        destination=self.name, delivery_id=gone.delivery_id)
        self._gone = gone

    def clear(self) -> None:
        """The destination took a delivery: it is back."""
        self._gone = None

    def parking(self, replayed_at: datetime | None) -> Gone | None:
        """The mark that parks a delivery last replayed at `replayed_at` (None: never): a replay asked after the
        destination answered it is gone is sent, as ops asked for it once they had fixed the endpoint."""
        gone = self._gone
        if gone is None or (replayed_at is not None and replayed_at > gone.since):
            return None
        return gone
