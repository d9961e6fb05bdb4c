"""Quiet hours in the person's own time zone: when a non-urgent message may be sent.

The window is local wall-clock time (e.g. 21:00-08:00) and may wrap past
midnight. The zone comes from the profile's `timezone` trait (an IANA name
such as `Europe/Paris`), else the hub's default; an unknown name falls back
to the default rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW = re.compile(r"^\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*$")


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    default_zone: ZoneInfo

    @classmethod
    def parse(cls, window: str, default_zone: str) -> "QuietHours | None":
        """`"21:00-08:00"` -> QuietHours; an empty string means no quiet hours."""
        if not window.strip():
            return None
        match = _WINDOW.match(window)
        if not match:
            raise ValueError(f"{window!r} is not a quiet-hours window; write HH:MM-HH:MM, e.g. 21:00-08:00")
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError(f"{window!r} starts and ends at the same minute")
        return cls(time(h1, m1), time(h2, m2), zone(default_zone))

    def zone_of(self, traits: dict) -> ZoneInfo:
        name = traits.get("timezone")
        try:
            return zone(name) if isinstance(name, str) else self.default_zone
        except ValueError:
            return self.default_zone

    def why_held(self, traits: dict, local_zone: ZoneInfo) -> str:
        """The reason a delayed message records: the window, the zone it was judged in, and whether that is
        the profile's own (an unknown `timezone` trait falls back to the default, which ops should see)."""
        reason = f"quiet hours {self.start:%H:%M}-{self.end:%H:%M} in {local_zone.key}"
        name = traits.get("timezone")
        if name is not None and (not isinstance(name, str) or local_zone.key != name):
            reason += f" (the profile's timezone {name!r} is not a known zone; the default was used)"
        return reason

    def release_time(self, at: datetime, local_zone: ZoneInfo) -> datetime | None:
        """When a message due at `at` may go out, or None if `at` is outside quiet hours."""
        local = at.astimezone(local_zone)
        moment = local.time()
        wraps = self.start > self.end
        quiet = (moment >= self.start or moment < self.end) if wraps else (self.start <= moment < self.end)
        if not quiet:
            return None
        release_day = local.date() + timedelta(days=1) if wraps and moment >= self.start else local.date()
        release = datetime.combine(release_day, self.end, tzinfo=local_zone)
        return release.astimezone(at.tzinfo)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known time zone; use an IANA name such as Europe/Paris") from None
