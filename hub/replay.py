"""`touchhub replay`: re-normalize a source's stored raw events with its current mapping.

The raw payload of every accepted event stays in the inbox (unless its
person was forgotten, which erases it: such events are left out, as nothing
of them is left to replay), so a fixed or improved mapping can be applied to
the past:
- an event that already became a touchpoint gets its mapped fields rewritten
  in place (same deterministic id; its profile, identity links and past
  decisions are left as they were, so no message is sent twice), as the
  pipeline would store it now: without a forgotten person's identifiers;
- an event that never became one (quarantined as unmappable, or dropped by a
  rule that no longer matches) goes back into the pipeline whole, identity and
  triggers included, and its quarantine entry is marked replayed. It becomes
  available to workers at `available_at`: late enough that every running hub
  has reloaded the mapping the replay used (HUB_MAPPINGS_RELOAD_SECONDS);
- an event whose stored payload is not JSON text (an inbox row the pipeline
  set aside as unreadable) is counted as unmappable, naming why, until its
  row is mended.
The mapping is the file as saved (`replay_source` looks at it first); a save
the hub refused stops the replay, naming the refusal.
Running it twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from hub.clock import utcnow
from hub.erased import without_erased
from hub.errors import ConfigError, EventDropped, MappingError
from hub.identity import as_carried, meanings_of
from hub.identity_config import IdentityConfig
from hub.mapping import Mapping as SourceMapping
from hub.model import Identifier, RawEvent, Touchpoint
from hub.normalize import normalize
from hub.store import Store, forget, json_text, replays
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.replays import StoredEvent
from hub.store.sql import lock_profiles

if TYPE_CHECKING:
    from hub.runtime import Hub

BATCH = 200
# Why an event is left out when its stored payload cannot be read: the pipeline quarantined its row (stage pipeline).
UNREADABLE_PAYLOAD = ("payload: the stored event is not JSON text (the pipeline set its inbox row aside, see the "
                      "quarantine); mend the row, then replay again")
UNREADABLE_RECEIVED_AT = ("received_at: the stored time cannot be read (the pipeline set its inbox row aside, see the "
                          "quarantine); mend the row, then replay again")


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
    """Re-normalize the source's stored events since `since` a batch per transaction (`BATCH`).

    Each batch takes the lock on profiles before it reads its raw events, as
    forget does before it wipes a person (`lock_profiles`, first in both, as
    in the pipeline): a batch that read a person's events as another node
    forgot them rewrote their wiped touchpoints from what it had read, and
    the erased email, traits and properties were back for good. Now forget
    waits for the batch, or the batch reads what forget left.
    """
    mapping = mappings[source_id]
    report = ReplayReport()
    after_id = 0
    while True:
        with store.write() as connection:
            lock_profiles(connection)
            rows = replays.stored_events(connection, source_id, since, after_id, BATCH)
            _store_again(connection, _normalized(rows, mapping, region, identity, report), available_at, report)
        if not rows:
            return report
        after_id = rows[-1].id
        on_batch(len(rows))


def _normalized(
    rows: Sequence[StoredEvent], mapping: SourceMapping, region: str, identity: IdentityConfig, report: ReplayReport,
) -> list[tuple[StoredEvent, Touchpoint]]:
    """Each row and the touchpoint the mapping makes of it now; those it drops or cannot map (or whose payload
    cannot be read) are counted in `report`, and left out."""
    normalized = []
    for row in rows:
        try:
            touchpoint = normalize(_raw_event(row), mapping, row.received_at, region, identity)
        except EventDropped:
            report.dropped += 1
            continue
        except MappingError as exc:
            report.unmappable += 1
            report.errors[str(exc)] = report.errors.get(str(exc), 0) + 1
            continue
        normalized.append((row, touchpoint))
    return normalized


def _raw_event(row: StoredEvent) -> RawEvent:
    """The row's event, its payload parsed here rather than by the store's read: a payload that is not JSON text
    (a row the pipeline set aside as unreadable) is a MappingError of this row, not a failure of the replay."""
    if row.received_at is None:
        raise MappingError(UNREADABLE_RECEIVED_AT)
    try:
        payload = json_text.loads(row.payload)
    except ValueError:
        raise MappingError(UNREADABLE_PAYLOAD) from None
    return RawEvent(row.source_id, row.message_id, payload)


def _store_again(
    connection: Connection, normalized: Sequence[tuple[StoredEvent, Touchpoint]], available_at: datetime,
    report: ReplayReport,
) -> None:
    """Rewrite the touchpoints already stored (`_rewritten`), and put the other events back in the pipeline."""
    forgotten = _forgotten_among(connection, [touchpoint for row, touchpoint in normalized if row.status == "done"])
    for row, touchpoint in normalized:
        outcome = _rewritten(connection, row.id, touchpoint, forgotten) if row.status == "done" else None
        if outcome is None:
            replays.requeue(connection, row.id, available_at)
            report.requeued += 1
            report.available_at = available_at
        elif outcome == "updated":
            report.rewritten += 1
        else:
            report.unchanged += 1


def _forgotten_among(connection: Connection, touchpoints: Sequence[Touchpoint]) -> set[Identifier]:
    """The identifiers of forgotten people the touchpoints carry (an alias's `previous_id` as each type it may
    be), in one lookup for the batch."""
    carried = list(dict.fromkeys(
        meaning for touchpoint in touchpoints for ident in touchpoint.identifiers for meaning in meanings_of(ident)
    ))
    return SqlIdentityGraph(connection).forgotten(carried)


def _rewritten(
    connection: Connection, inbox_id: int, touchpoint: Touchpoint, forgotten: set[Identifier]
) -> str | None:
    """`replays.rewrite_touchpoint` of the touchpoint as the pipeline stores the same event taken in now: without
    the identifiers of forgotten people it carries, nor their values in its fields, its raw body dropped
    (`hub.erased`). A new mapping that reads an address from a field (a referral's friend_email) wrote a
    forgotten person's email into the touchpoints it rewrote."""
    erased = as_carried(touchpoint.identifiers, forgotten)
    outcome = replays.rewrite_touchpoint(connection, without_erased(touchpoint, erased) if erased else touchpoint)
    if erased and outcome is not None:
        forget.forget_inbox_payloads(connection, [inbox_id])
    return outcome


def replay_source(hub: Hub, source_id: str, since: datetime, on_batch: Callable[[int], None] = lambda _count: None) -> ReplayReport:
    """`replay` with the source's mapping file as saved, as the CLI reads it: the hub's catalog looks at the file
    first (`refused_now`), as it otherwise does only every HUB_MAPPINGS_RELOAD_SECONDS, and a fix saved just
    before a replay was replayed with the old mapping. Re-processed events wait until every running hub has
    reloaded it (within HUB_MAPPINGS_RELOAD_SECONDS).

    Raises:
        ConfigError: the hub refused the file as saved (its problems): the last good version, still in force,
            is not the mapping the replay was asked for.
    """
    assert hub.mappings is not None and hub.identity is not None
    refused = hub.mappings.refused_now(source_id)
    if refused:
        raise ConfigError(refused)
    available_at = utcnow() + timedelta(seconds=2 * hub.settings.mappings_reload_seconds)
    return replay(hub.store, hub.mappings, source_id, since, available_at, hub.settings.default_phone_region, hub.identity, on_batch)
