"""Human-written durations in config files: '90s', '2m', '24h', '30d', '1w'."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_ABOVE_ZERO = r"^\s*(?=[\d.]*[1-9])(\d+(?:\.\d+)?)\s*([smhdw])\s*$"  # _PATTERN with a digit other than 0
_EXAMPLES = ["90s", "2m", "24h", "30d"]
_SHORTEST = timedelta(microseconds=1)

LONGEST = timedelta(days=36_500)
"""The longest duration the hub takes: a century, as far back as it takes events (`normalize.EVENT_TIME_SPAN`).
Rules add their windows to event times, and a window past this one left datetime's range (year 9999): every event
such a rule looked at failed, where "ever" needs no more than a century."""


def parse_duration(text: object) -> timedelta:
    """A duration as ops write it, at most `LONGEST`; ValueError saying what to write, never OverflowError, which
    pydantic does not turn into a validation error (the file's loader died with a traceback instead)."""
    try:
        duration = text if isinstance(text, timedelta) else _parsed(text)
    except OverflowError:  # past even timedelta's range (99999999999d)
        duration = timedelta.max
    if duration > LONGEST:
        raise ValueError(f"{text!r} is longer than the hub's longest duration, {LONGEST.days}d (100 years); write at most that")
    return duration


def _parsed(text: object) -> timedelta:
    """A number above 0 is at least a microsecond, the shortest timedelta: the schema takes `0.0000001s` as more
    than 0s (a digit other than 0, `_ABOVE_ZERO`), so the loader must not round it to a refused 0."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit, such as 90s, 2m, 24h or 30d")
    number, unit = match.groups()
    duration = timedelta(**{_UNITS[unit]: float(number)})
    return max(duration, _SHORTEST) if number.strip("0.") else duration


def since(text: str, now: datetime) -> datetime:
    """The start of a period as ops write it, ISO-8601 time or how long ago ('24h'), as an aware UTC datetime;
    ValueError saying which forms are taken."""
    if _PATTERN.match(text):
        return now - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor a duration; write one such as 2026-11-20T00:00Z or 24h") from None
    try:
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before the first moment datetime holds in UTC
        raise ValueError(f"{text!r} is outside the calendar the hub keeps (years 1 to 9999 in UTC)") from None


def _above_zero(value: timedelta) -> timedelta:
    """A period of no length silently undid what it was for: a rule's cap capped nothing and an absence nudged
    before any follow-up could come; delivery.yaml's `max_age: 0s` became the 24 h default, and a zero delay or
    reset retried and probed with no pause, hammering the provider."""
    if value <= timedelta(0):
        raise ValueError("must be more than 0s (a period of no length holds no event); write how long, such as 2m or 24h")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": _PATTERN.pattern, "examples": _EXAMPLES}),
]

PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_above_zero),
    WithJsonSchema({
        "type": "string", "pattern": _ABOVE_ZERO, "examples": _EXAMPLES,
        "description": f"More than 0s; at most {LONGEST.days}d (100 years): the hub refuses a longer one.",
    }),
]
"""A period something must fall within: a window, a wait, a cap."""
