"""Reading the times senders write: ISO-8601 as Python reads it, and what RFC 3339 adds to it.

Python 3.11's `fromisoformat` reads a lower-case `t` but not a lower-case
`z` (`2026-12-07t10:00:00z`), and no second 60: both are RFC 3339, and a
clock synced to a leap second sends one. Refused, a Segment message was
rejected at ingest, and another source's event was acknowledged and then
quarantined by the pipeline. Ingest and the pipeline read times here, so
they agree on what a time is.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

# A time whose second is 60 (RFC 3339's leap second), split around it: what precedes it, and its offset if any.
_LEAP_SECOND = re.compile(r"(.+[Tt ]\d\d:\d\d:)60(?:[.,]\d+)?([Zz]|[+-]\d\d:?\d\d)?")


def iso_time(text: str) -> datetime:
    """`text` as a datetime, naive when it names no offset; ValueError if it is no ISO-8601 or RFC 3339 time.

    A leap second is read as the last instant before it, 23:59:59.999999:
    Python has no second 60, and the next second would date the event on the
    next day (the next year, on 31 December), after the events of the second
    that follows it. A second 60 anywhere but at 23:59 UTC is no leap second.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    leap = _LEAP_SECOND.fullmatch(text)
    moment = datetime.fromisoformat((f"{leap[1]}59.999999{leap[2] or ''}" if leap else text).upper())
    if leap and _utc_minute(moment) != "23:59":
        raise ValueError(f"{text!r}: a second 60 is a leap second only at 23:59 UTC")
    return moment


def _utc_minute(moment: datetime) -> str:
    try:
        utc = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    except OverflowError:  # outside the years 1-9999 once in UTC: no leap second either
        return ""
    return utc.strftime("%H:%M")
