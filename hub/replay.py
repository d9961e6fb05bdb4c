"""`touchhub replay`: re-normalize a source's stored raw events with its current mapping.

The raw payload of every accepted event stays in the inbox (unless its
person was forgotten, which erases it: such events are left out, as nothing
of them is left to replay), so a fixed or improved mapping can be applied to
the past:
- an event that already became a touchpoint gets its mapped fields rewritten
  in place (same deterministic id; its profile, identity links and past
  decisions are left as they were, so no message is sent twice);
- an event that never became one (quarantined as unmappable, or dropped by a
  rule that no longer matches) goes back into the pipeline whole, identity and
  triggers included, and its quarantine entry is marked replayed. It becomes
  available to workers at `available_at`: late enough that every running hub
  has reloaded the mapping the replay used (HUB_MAPPINGS_RELOAD_SECONDS).
Running it twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from hub.clock import utcnow
from hub.errors import EventDropped, MappingError
from hub.identity_config import IdentityConfig
from hub.mapping import Mapping as SourceMapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.store import Store, replays

if TYPE_CHECKING:
    from hub.runtime import Hub

BATCH = 200


@dataclass
class ReplayReport:
    rewritten: int = 0
    unchanged: int = 0
    requeued: int = 0
    dropped: int = 0
    unmappable: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # mapping error -> events still failing with it
    available_at: datetime | None = None  # when the re-processed events go, if any were

    @property
    def seen(self) -> int:
        return self.rewritten + self.unchanged + self.requeued + self.dropped + self.unmappable


def replay(
    store: Store, mappings: Mapping[str, SourceMapping], source_id: str, since: datetime, available_at: datetime,
    region: str, identity: IdentityConfig, on_batch: Callable[[int], None] = lambda _count: None,
) -> ReplayReport:
    mapping = mappings[source_id]
    report = ReplayReport()
    after_id = 0
    while True:
        with store.write() as connection:
            rows = replays.stored_events(connection, source_id, since, after_id, BATCH)
            for row, status in rows:
                try:
                    touchpoint = normalize(RawEvent(row.source_id, row.message_id, row.payload), mapping, row.received_at, region, identity)
                except EventDropped:
                    report.dropped += 1
                    continue
                except MappingError as exc:
                    report.unmappable += 1
                    report.errors[str(exc)] = report.errors.get(str(exc), 0) + 1
                    continue
                outcome = replays.rewrite_touchpoint(connection, touchpoint) if status == "done" else None
                if outcome is None:
                    replays.requeue(connection, row.id, available_at)
                    report.requeued += 1
                    report.available_at = available_at
                elif outcome == "updated":
                    report.rewritten += 1
                else:
                    report.unchanged += 1
        if not rows:
            return report
        after_id = rows[-1][0].id
        on_batch(len(rows))


def replay_source(hub: Hub, source_id: str, since: datetime, on_batch: Callable[[int], None] = lambda _count: None) -> ReplayReport:
    """`replay` with the hub's mapping. Re-processed events wait until every running hub has reloaded it
    (within HUB_MAPPINGS_RELOAD_SECONDS)."""
    assert hub.mappings is not None and hub.identity is not None
    available_at = utcnow() + timedelta(seconds=2 * hub.settings.mappings_reload_seconds)
    return replay(hub.store, hub.mappings, source_id, since, available_at, hub.settings.default_phone_region, hub.identity, on_batch)
