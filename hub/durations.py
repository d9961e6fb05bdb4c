"""Human-written durations in config files: '90s', '2m', '24h', '30d', '1w'."""

from __future__ import annotations

import re
from datetime import timedelta
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


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": _PATTERN.pattern, "examples": ["90s", "2m", "24h", "30d"]}),
]
