"""Profile traits with the event time that set each: last write wins by event time, not arrival order.

A profile keeps its traits beside their times (`trait_times`), so an event
that arrives late cannot overwrite what a newer one said. Merges, unmerges,
the identity cache and consent all combine traits this way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

Traits = tuple[dict[str, Any], dict[str, str]]  # values, and the event time that set each


def trait_time(occurred_at: datetime, received_at: datetime) -> datetime:
    """When an event's traits count as set: its time, but no later than the hub received it.

    Newest wins per trait, by event time. A device clock years ahead would
    otherwise win over every correct change for years, and an identify dated
    9999-12-31T23:59:59.999999Z (a broken clock, or anyone holding a public
    write key) would tie the pin a withdrawal holds (`consent_changes.PINNED`)
    and undo an unsubscribe.
    """
    return min(occurred_at, received_at)


def stamped_traits(traits: dict[str, Any], observed_at: datetime) -> Traits:
    """Traits paired with the event time that set each, the shape last-write-wins compares."""
    stamp = observed_at.isoformat()
    return dict(traits), {key: stamp for key in traits}


# Traits whose objects merge key by key instead of being replaced, as Segment replaces a trait's object: an
# identify carrying `consent: {email: true}` must not drop an earlier `consent: {sms: false}`.
MERGED_KEY_BY_KEY = frozenset({"consent"})


def part_time_key(key: str, part: str) -> str:
    """Where the times keep when one part of a `MERGED_KEY_BY_KEY` object was set (`consent[sms]`).

    Each part has its own time, not only the object: an SMS START after a
    `consent: {sms: false}` must outrank it even when a later identify set
    `consent.email`, and an unmerge, which rebuilds traits from both
    sides' events, compares it with the part, not the object. A part
    without one (stored before part times were kept) has the object's.
    """
    return f"{key}[{part}]"


def newest_traits(first: Traits, second: Traits) -> Traits:
    """Per trait, the value with the later time; for `MERGED_KEY_BY_KEY`, the two objects' keys together, each
    part the later one's by the part's own time."""
    values, times = dict(first[0]), dict(first[1])
    for key, value in second[0].items():
        stamp = second[1][key]
        if key in MERGED_KEY_BY_KEY and isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = merged = dict(values[key])
            times.update(_part_times(key, merged, times))  # before the object's time moves on
            for part, part_value in value.items():
                part_key, part_stamp = part_time_key(key, part), second[1].get(part_time_key(key, part), stamp)
                if part_stamp >= times.get(part_key, ""):
                    merged[part], times[part_key] = part_value, part_stamp
            times[key] = max(times[key], stamp)
        elif key not in times or stamp >= times[key]:
            values[key], times[key] = value, stamp
            if key in MERGED_KEY_BY_KEY:  # the object replaced whole: its parts' times are the new object's
                times = {k: t for k, t in times.items() if not k.startswith(f"{key}[")}
                if isinstance(value, dict):
                    times.update(_part_times(key, value, second[1]))
    return values, times


def _part_times(key: str, parts: dict[str, Any], times: dict[str, str]) -> dict[str, str]:
    """Each part's time in `times`, the object's where a part has none of its own."""
    return {part_time_key(key, part): times.get(part_time_key(key, part), times[key]) for part in parts}


def with_part_times(times: dict[str, str], keys: list[str]) -> dict[str, str]:
    """The times of `keys`, with the part times of those that are `MERGED_KEY_BY_KEY` objects."""
    prefixes = tuple(f"{key}[" for key in keys if key in MERGED_KEY_BY_KEY)
    return {k: t for k, t in times.items() if k in keys or (prefixes and k.startswith(prefixes))}
