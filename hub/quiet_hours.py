"""Quiet hours in the person's own time zone: when a non-urgent message may be sent.

The window is local wall-clock time (e.g. 21:00-08:00) and may wrap past
midnight. The zone comes from the profile's `timezone` trait (an IANA name
such as `Europe/Paris`), else from the device that sent the event the
message answers (`context.timezone`, which Segment and RudderStack SDKs send
with every event), else the hub's default; a name that is no zone (`GMT+2`
typed in a form, a typo) gives way to the next rather than guessing. The
device's zone is read from the event, not kept as a trait: written on every
event it would outrank the person's own `timezone` by recency, and rewrite
the profile each time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_WINDOW = re.compile(r"^\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*$")
# Names zoneinfo loads, and `available_timezones` may list, that are no place's zone: `localtime` is the host's own
# (Debian's tz database has it as a file), so quiet hours followed the server, not the person; `Factory` is the
# tz database's "zone not set", -00.
_NOT_A_PLACE = frozenset({"localtime", "Factory"})


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

    def zone_of(self, traits: dict, touchpoint: dict) -> ZoneInfo:
        """The person's zone: their `timezone` trait, else the event's device's (`touchpoint`'s `context.timezone`),
        else the default; one that names no zone gives way to the next, so a trait of `GMT+2` does not throw away
        the zone the device sent."""
        return next(filter(None, map(_loaded, _named_zones(traits, touchpoint).values())), self.default_zone)

    def zone_at_claim(self, traits: dict, stamped: str) -> ZoneInfo:
        """The zone a message comes due in: the profile's `timezone` trait as it is then, since a person may move
        while a message is held overnight, else the zone routing `stamped` on it when it planned it (it may have
        come from the event's device, which the claim does not see); the default for a stamp this process
        cannot load (a zone newer than this host's tz database, which another node planned the message with)."""
        return _loaded(traits.get("timezone")) or _loaded(stamped) or self.default_zone

    def why_held(self, traits: dict, touchpoint: dict, local_zone: ZoneInfo) -> str:
        """The reason a delayed message records: the window, the zone it was judged in, and whether that is
        the person's own (a name that is no zone gave way to the next, the device's or the default: ops should see it)."""
        reason = f"quiet hours {self.start:%H:%M}-{self.end:%H:%M} in {local_zone.key}"
        unknown, used = [], "the default"
        for whose, name in _named_zones(traits, touchpoint).items():
            if _loaded(name) is not None:
                used = whose
                break
            unknown.append(f"{whose} {name!r} is not a known zone")
        if unknown:
            reason += f" ({'; '.join(unknown)}; {used} was used)"
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
        return _first_reached(datetime.combine(release_day, self.end), local_zone, at).astimezone(at.tzinfo)


def _named_zones(traits: dict, touchpoint: dict) -> dict[str, object]:
    """The zone names the person has, by whose they are, their own first: the `timezone` trait, then the zone
    the event's device sent (`context.timezone`); those absent left out."""
    context = touchpoint.get("context")
    named = {
        "the profile's timezone": traits.get("timezone"),
        "the device's context.timezone": context.get("timezone") if isinstance(context, dict) else None,
    }
    return {whose: name for whose, name in named.items() if name is not None}


def _loaded(name: object) -> ZoneInfo | None:
    """`name`'s zone, or None for what names none: a typo, a `GMT+2`, a number, or a zone newer than this
    host's tz database."""
    if not isinstance(name, str):
        return None
    try:
        return zone(name)
    except ValueError:
        return None


def _first_reached(wall_clock: datetime, local_zone: ZoneInfo, after: datetime) -> datetime:
    """The first instant after `after` at which clocks in `local_zone` read `wall_clock` or later.

    On most days that is `wall_clock` itself. When clocks go back it occurs
    twice, and a message in the repeated hour is released by the occurrence
    after it, not the one before. When they go forward past it, it never
    occurs, and the release is the jump (03:00, not 03:30, for an end of 02:30).
    """
    first, second = (wall_clock.replace(tzinfo=local_zone, fold=fold).astimezone(timezone.utc) for fold in (0, 1))
    if first <= second:  # it occurs (once, or twice when clocks go back)
        return first if first > after else second
    before, past = int(second.timestamp()), int(first.timestamp())  # the jump lies between; clocks read less, then more
    while past - before > 1:
        middle = (before + past) // 2
        if datetime.fromtimestamp(middle, local_zone).replace(tzinfo=None) >= wall_clock:
            past = middle
        else:
            before = middle
    return datetime.fromtimestamp(past, timezone.utc)


def zone(name: str) -> ZoneInfo:
    """`name`'s zone; ValueError for a name that is none. The name may come from anyone holding a source's write
    key (a `timezone` trait, an event's `context.timezone`), so only an IANA zone name (`_iana_zones`) reaches
    zoneinfo, which imports a package for each `/` of a name and loads any file under the tz database as a zone
    (`localtime`, `posixrules`, `right/UTC`, `posix/Europe/Paris`); and an OSError reading a key (a file of the tz
    database it cannot read) means "not a known zone" too: raised, it failed every message to the person and every
    delivery claim."""
    if name not in _iana_zones():
        raise _unknown_zone(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _unknown_zone(name) from None


@functools.cache
def _iana_zones() -> frozenset[str]:
    """The zone names of this host's tz database (`available_timezones`, which walks it: read once), but those of
    no place (`_NOT_A_PLACE`)."""
    return frozenset(available_timezones()) - _NOT_A_PLACE


def _unknown_zone(name: str) -> ValueError:
    return ValueError(f"{name!r} is not a known time zone; use an IANA name such as Europe/Paris")
