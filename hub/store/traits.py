"""Profile traits with the event time that set each: last write wins by event time, not arrival order.

A profile keeps its traits beside their times (`trait_times`), so an event
that arrives late cannot overwrite what a newer one said. Merges, unmerges,
the identity cache and consent all combine traits this way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

Traits = tuple[dict[str, Any], dict[str, str]]  # values, and the event time that set each


def stamped_traits(traits: dict[str, Any], observed_at: datetime) -> Traits:
    """Traits paired with the event time that set each, the shape last-write-wins compares."""
    stamp = observed_at.isoformat()
    return dict(traits), {key: stamp for key in traits}


# Traits whose objects merge key by key instead of being replaced, as Segment replaces a trait's object: an
# identify carrying `consent: {email: true}` must not drop an earlier `consent: {sms: false}`.
MERGED_KEY_BY_KEY = frozenset({"consent"})


def newest_traits(first: Traits, second: Traits) -> Traits:
    """Per trait, the value with the later time; for `MERGED_KEY_BY_KEY`, the two objects' keys together, the
    later one's winning where both have a key."""
    values, times = dict(first[0]), dict(first[1])
    for key, value in second[0].items():
        later = key not in times or second[1][key] >= times[key]
        if key in MERGED_KEY_BY_KEY and isinstance(value, dict) and isinstance(values.get(key), dict):
            older, newer = (values[key], value) if later else (value, values[key])
            values[key] = {**older, **newer}
            times[key] = max(times[key], second[1][key])
        elif later:
            values[key], times[key] = value, second[1][key]
    return values, times
