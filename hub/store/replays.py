"""Store side of `touchhub replay`: stored raw events of a source, and putting them back in the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Text, cast, func, select, update

from hub.model import Touchpoint
from hub.store import sql
from hub.store.schema import inbox, quarantine, touchpoints

ERASED_PAYLOAD = "{}"  # a forgotten person's raw event, as both engines store it (`hub.store.forget`)
# What a re-normalization may change; profile, ids and receipt time stay.
MAPPED_COLUMNS = ("kind", "event", "stage", "moment", "occurred_at", "properties", "traits", "context", "mapping_version")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An inbox row as a replay reads it: its payload as the stored text, which the replay parses (`hub.replay`).
    Read through the JSON type, a row the pipeline set aside as unreadable (a payload that is not JSON text) raised
    out of the batch's read, and no event of its source could be replayed until the row was mended."""

    id: int
    source_id: str
    message_id: str
    payload: str
    received_at: datetime | None  # None: the stored time cannot be read (a row the pipeline set aside for it)
    status: str


def stored_events(connection: Connection, source_id: str, since: datetime, after_id: int, limit: int) -> list[StoredEvent]:
    """Replayable inbox rows of a source received since `since` (`_replayable`), in id order."""
    query = (
        select(inbox.c.id, inbox.c.source_id, inbox.c.message_id, cast(inbox.c.payload, Text),
               sql.as_stored(inbox.c.received_at), inbox.c.status)
        .where(*_replayable(source_id, since), inbox.c.id > after_id)
        .order_by(inbox.c.id)
        .limit(limit)
    )
    read = sql.read_stored(connection, inbox.c.received_at)
    return [StoredEvent(*row[:4], _time_or_none(read, row[4]), row[5]) for row in connection.execute(query).all()]


def _time_or_none(read: Callable[[object], datetime], stored: object) -> datetime | None:
    try:
        return read(stored)
    except (ValueError, TypeError):
        return None


def count_stored(connection: Connection, source_id: str, since: datetime) -> int:
    return connection.execute(select(func.count()).where(*_replayable(source_id, since))).scalar_one()


def _replayable(source_id: str, since: datetime) -> tuple[ColumnElement[bool], ...]:
    """Processed or failed rows that still hold their body.

    Forgetting a person empties their raw payloads to ``{}`` (`hub.store.forget`):
    such a row holds nothing a mapping could make a touchpoint of, and re-normalizing
    it would report a mapping error for an event that is simply gone.
    """
    return (
        inbox.c.source_id == source_id, inbox.c.received_at >= since, inbox.c.status.in_(("done", "failed")),
        cast(inbox.c.payload, Text) != ERASED_PAYLOAD,
    )


def rewrite_touchpoint(connection: Connection, touchpoint: Touchpoint) -> str | None:
    """Overwrite a stored touchpoint's mapped fields; 'updated', 'unchanged', or None when it was never stored."""
    stored = connection.execute(
        select(touchpoints.c.mapping_version).where(touchpoints.c.touchpoint_id == touchpoint.touchpoint_id)
    ).scalar_one_or_none()
    if stored is None:
        return None
    if stored == touchpoint.mapping_version:
        return "unchanged"
    connection.execute(
        update(touchpoints)
        .where(touchpoints.c.touchpoint_id == touchpoint.touchpoint_id)
        .values(
            identifiers=[[ident.type, ident.value] for ident in touchpoint.identifiers],
            **{column: getattr(touchpoint, column) for column in MAPPED_COLUMNS},
        )
    )
    return "updated"


def requeue(connection: Connection, inbox_id: int, available_at: datetime) -> None:
    """Send a row through the whole pipeline again from `available_at`, and mark its quarantine entries replayed."""
    connection.execute(
        update(inbox).where(inbox.c.id == inbox_id)
        .values(status="pending", attempts=0, available_at=available_at, processed_at=None, error=None)
    )
    connection.execute(
        update(quarantine).where(quarantine.c.inbox_id == inbox_id, quarantine.c.replayed_at.is_(None))
        .values(replayed_at=available_at)
    )
