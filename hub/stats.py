"""One summary of what the hub holds: the demo prints it, `/api/stats` serves it."""

from __future__ import annotations

from typing import Any

from hub.clock import utcnow
from hub.store import (
    Store,
    decisions,
    delivery_log,
    inbox,
    outbox,
    profile_views,
    quarantine,
    timers,
    touchpoints,
)


def collect(store: Store) -> dict[str, Any]:
    with store.read() as connection:
        graph = profile_views.counts(connection)
        return {
            "inbox": inbox.count_by_status(connection),
            "touchpoints": touchpoints.count(connection),
            "profiles": graph["profiles"],
            "merges": graph["merges"],
            "decisions": decisions.count_by_rule(connection),
            "deliveries": delivery_log.count_by_channel_and_status(connection),
            "timers": timers.count_by_status(connection),
            "quarantined": quarantine.count(connection),
        }


def is_idle(store: Store) -> bool:
    """No inbox row waiting, no timer due and no delivery due or retrying: what the demo waits for. A timer given up
    on is settled (`failed`), as a quarantined inbox row and a dead delivery are."""
    now = utcnow()
    with store.read() as connection:
        return (
            inbox.count_by_status(connection).get("pending", 0) == 0
            and timers.pending_due(connection, now) == 0
            and outbox.unfinished(connection, now) == 0
        )
