"""The daily cap: at most N messages reach a person in any 24 hours, counted when each goes.

Counted when they were planned, a follow-up delayed two days (or a message
held overnight by quiet hours) spent the cap of a day in which it sent
nothing, and on the day it went, it went beside that day's full count. A
message that went counts when the provider took it: counted when it was first
due, one retried for hours (or a dead letter replayed) fell outside the day it
went, and a second message went beside it.

Only messages that may have reached the person count (`outbox.going_since`):
not one a provider refused for good (a dead push token, an invalid or
unsubscribed number, a hard bounce) or reported lost (Twilio `undelivered`),
which spent the day's message on nothing, and took it from the fallback
planned for it; one whose retries ran out (`dead`) may have arrived, and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

CAP_PERIOD = timedelta(days=1)


def has_room(going_at: Sequence[datetime], at: datetime, cap: int, period: timedelta = CAP_PERIOD) -> bool:
    """Whether one more message going `at` keeps every `period` (24 h) that holds it at `cap` messages or
    fewer, beside the person's other messages going (or gone) `going_at`. A rule's cap asks the same of its
    decisions over its `within` (`triggers._decide`).

    The fullest span holding `at` starts at `at` or at one of the messages
    before it, so only those starts are tried.
    """
    near = [t for t in going_at if at - period < t < at + period]
    starts = [t for t in near if t <= at] + [at]
    return all(sum(start <= t < start + period for t in near) < cap for start in starts)
