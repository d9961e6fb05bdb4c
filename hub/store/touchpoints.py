"""Canonical touchpoints, queryable by profile, event and time."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, desc, func, select, update

from hub.model import Touchpoint
from hub.store.schema import touchpoints
from hub.store.sql import insert_ignoring_conflicts


def insert(connection: Connection, touchpoint: Touchpoint, profile_id: str, inbox_id: int) -> bool:
    """Store a touchpoint; False when its deterministic id was already stored (a replay)."""
    row = {
        "touchpoint_id": touchpoint.touchpoint_id,
        "inbox_id": inbox_id,
        "source_id": touchpoint.source_id,
        "message_id": touchpoint.message_id,
        "kind": touchpoint.kind,
        "event": touchpoint.event,
        "stage": touchpoint.stage,
        "moment": touchpoint.moment,
        "profile_id": profile_id,
        "occurred_at": touchpoint.occurred_at,
        "received_at": touchpoint.received_at,
        "identifiers": [[ident.type, ident.value] for ident in touchpoint.identifiers],
        "properties": touchpoint.properties,
        "traits": touchpoint.traits,
        "context": touchpoint.context,
        "mapping_version": touchpoint.mapping_version,
    }
    return insert_ignoring_conflicts(connection, touchpoints, [row], ["touchpoint_id"]) == 1


def count_events(
    connection: Connection, profile_id: str, event: str, since: datetime, until: datetime, exclude_id: str
) -> int:
    """How many `event`s the profile had in [since, until], not counting the touchpoint being evaluated."""
    query = select(func.count()).where(
        touchpoints.c.profile_id == profile_id,
        touchpoints.c.event == event,
        touchpoints.c.occurred_at >= since,
        touchpoints.c.occurred_at <= until,
        touchpoints.c.touchpoint_id != exclude_id,
    )
    return connection.execute(query).scalar_one()


def move_to_profile(connection: Connection, from_profile_ids: Iterable[str], to_profile_id: str) -> None:
    """Re-attribute touchpoints after a merge, so a profile's history is one query."""
    connection.execute(
        update(touchpoints).where(touchpoints.c.profile_id.in_(list(from_profile_ids))).values(profile_id=to_profile_id)
    )


def search(
    connection: Connection,
    *,
    limit: int,
    source_id: str | None = None,
    event: str | None = None,
    profile_id: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first, by the time the hub received them."""
    query = select(touchpoints).order_by(desc(touchpoints.c.received_at), desc(touchpoints.c.occurred_at)).limit(limit)
    if source_id:
        query = query.where(touchpoints.c.source_id == source_id)
    if event:
        query = query.where(touchpoints.c.event == event)
    if profile_id:
        query = query.where(touchpoints.c.profile_id == profile_id)
    return [dict(row) for row in connection.execute(query).mappings()]


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(touchpoints)).scalar_one()
