"""Human-written durations in config files: '90s', '2m', '24h', '30d', '1w'."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: object) -> timedelta:
    if isinstance(text, timedelta):
        return text
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit, such as 90s, 2m, 24h or 30d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def since(text: str, now: datetime) -> datetime:
    """The start of a period as ops write it, ISO-8601 time or how long ago ('24h'), as an aware UTC datetime;
    ValueError saying which forms are taken."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor a duration; write one such as 2026-11-20T00:00Z or 24h") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": _PATTERN.pattern, "examples": ["90s", "2m", "24h", "30d"]}),
]
