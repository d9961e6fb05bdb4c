"""When a failed delivery is tried again, and when it is given up: a table plus tenacity.

The default table maps an HTTP status to an outcome; a destination may add its
provider's own codes (Twilio's 21610 "unsubscribed" is a 400 that must never
be retried, its 20429 is a 429 that must be). Backoff and stop conditions are
tenacity's primitives, evaluated against the attempt count and age stored in
the outbox rather than by sleeping in-process: a retry due in ten minutes must
survive a restart, so the schedule lives in the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from tenacity import (
    RetryCallState,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)

# The longest a destination's Retry-After holds back its other deliveries (`hub.throttle.ProviderWait`), whatever it
# asked: held as long as any header said, a bogus one ("Retry-After: 99999999") would stall the destination for good.
# The delivery it answered still waits as long as asked, within its max age.
LONGEST_PROVIDER_WAIT_SECONDS = 3600.0


DEFAULT_STATUS_OUTCOMES: Mapping[int, type[DeliveryError]] = {
    401: AuthDeliveryError,
    403: AuthDeliveryError,
    408: RetryableDeliveryError,
    409: RetryableDeliveryError,
    425: RetryableDeliveryError,
    429: RetryableDeliveryError,
}


def outcome_for_status(status: int, overrides: Mapping[int, type[DeliveryError]] | None = None) -> type[DeliveryError]:
    """The error class for an HTTP status: overrides first, then the table, then 5xx retry / 4xx permanent."""
    for table in (overrides or {}, DEFAULT_STATUS_OUTCOMES):
        if status in table:
            return table[status]
    return RetryableDeliveryError if status >= 500 else PermanentDeliveryError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_age: timedelta
    base_delay: float
    max_delay: float

    def next_delay(self, attempts_made: int, age: timedelta, retry_after: float | None) -> float | None:
        """Seconds until the next try, or None when the policy is exhausted (dead-letter).

        Full-jitter exponential backoff, never sooner than the provider's
        Retry-After, and cut to what is left of the delivery's maximum age:
        a wait the jitter drew past it is one last try at the budget's end,
        where dropping it dead-lettered a delivery with attempts and time
        left by the roll of the jitter. Only a Retry-After past the budget
        dead-letters, as the provider will refuse any try before it.
        """
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempts_made
        state.start_time = time.monotonic() - age.total_seconds()
        state.outcome_timestamp = time.monotonic()
        stop = stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_age.total_seconds())
        if stop(state):
            return None
        left = (self.max_age - age).total_seconds()
        delay = wait_random_exponential(multiplier=self.base_delay, max=self.max_delay)(state)
        if retry_after is not None and math.isfinite(retry_after):
            if retry_after > left:
                return None
            delay = max(delay, retry_after)
        return min(delay, left)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header, which is either delay-seconds or an HTTP date (RFC 9110 10.2.3);
    None when it is neither (a malformed header is the provider's, and ignored)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # delay-seconds is 1*DIGIT, ASCII: str.isdigit() alone takes '²' too
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year or offset past what int() fits in C
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - now).total_seconds())
