"""Canonical touchpoints, queryable by profile, event and time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, func, select

from hub.model import Identifier, Touchpoint
from hub.pii import mask_value
from hub.store.keyset import Key, Keyset
from hub.store.schema import UTCDateTime, touchpoints
from hub.store.precompiled import InLists, Precompiled, numbered, padded, placeholders
from hub.store.sql import precompiled_insert_skipping


_INSERT_COLUMNS = (
    "touchpoint_id", "inbox_id", "source_id", "message_id", "kind", "event", "stage", "moment", "profile_id",
    "occurred_at", "received_at", "identifiers", "properties", "traits", "context", "mapping_version",
)
# Per event, so `Precompiled`; its rowcount says whether the touchpoint was new.
_INSERT = precompiled_insert_skipping(touchpoints, ["touchpoint_id"], _INSERT_COLUMNS)


def insert(connection: Connection, touchpoint: Touchpoint, profile_id: str, inbox_id: int) -> bool:
    """Store a touchpoint; False when its deterministic id was already stored (a replay)."""
    return bool(_INSERT.changed(connection, {
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
    }))


_EVENT_COLUMNS = (
    touchpoints.c.profile_id, touchpoints.c.touchpoint_id, touchpoints.c.source_id, touchpoints.c.kind,
    touchpoints.c.event, touchpoints.c.stage, touchpoints.c.moment, touchpoints.c.occurred_at,
    touchpoints.c.identifiers, touchpoints.c.properties, touchpoints.c.traits, touchpoints.c.context,
)
_EVENT_KEYS = tuple(column.key for column in _EVENT_COLUMNS)


@lru_cache(maxsize=256)
def _events_query(profiles: int, names: int | None, by_stage: bool, by_moment: bool) -> Precompiled:
    """Built once per shape (how many profiles, how many event names, each `padded`) with a bind
    parameter per value, and `Precompiled`: rules ask this on every event, and building a SQLAlchemy
    statement, or rendering an expanding IN, costs more than running it."""
    query = select(*_EVENT_COLUMNS).where(
        touchpoints.c.profile_id.in_(placeholders(profiles, "profile_")),
        touchpoints.c.occurred_at >= bindparam("since", type_=UTCDateTime),
        touchpoints.c.occurred_at <= bindparam("until", type_=UTCDateTime),
    )
    if names is not None:
        query = query.where(touchpoints.c.event.in_(placeholders(names, "name_")))
    if by_stage:
        query = query.where(touchpoints.c.stage == bindparam("stage"))
    if by_moment:
        query = query.where(touchpoints.c.moment == bindparam("moment"))
    return Precompiled(query.order_by(touchpoints.c.occurred_at))


def events(
    connection: Connection,
    profile_id: str,
    since: datetime,
    until: datetime,
    *,
    names: Sequence[str] | None = None,
    stage: str | None = None,
    moment: str | None = None,
) -> list[dict[str, Any]]:
    """The profile's touchpoints in [since, until] as the documents rule predicates read, oldest first."""
    return events_of(connection, [profile_id], since, until, names=names, stage=stage, moment=moment).get(profile_id, [])


def events_of(
    connection: Connection,
    profile_ids: Iterable[str],
    since: datetime,
    until: datetime,
    *,
    names: Iterable[str] | None = None,
    stage: str | None = None,
    moment: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`events` of several profiles in one query (the timer engine reads a batch's follow-ups so), by profile id."""
    profile_ids, names = padded(profile_ids), None if names is None else padded(names)
    if not profile_ids or names == []:
        return {}  # nothing can match (and an empty IN is no plain bind parameter)
    query = _events_query(len(profile_ids), None if names is None else len(names), stage is not None, moment is not None)
    values = {"since": since, "until": until, "stage": stage, "moment": moment,
              **numbered(profile_ids, "profile_"), **numbered(names or (), "name_")}
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in query.execute(connection, values):
        document = dict(zip(_EVENT_KEYS, row))
        document.update(occurred_at=document["occurred_at"].isoformat(), identifiers=dict(map(tuple, document["identifiers"])))
        found[document.pop("profile_id")].append(document)
    return found


_KEYS = tuple(column.key for column in touchpoints.c)


_BY_IDS = InLists(lambda ids: select(touchpoints).where(touchpoints.c.touchpoint_id.in_(ids)))  # each timer set's anchors


def get_many(connection: Connection, touchpoint_ids: Iterable[str]) -> dict[str, Touchpoint]:
    """Touchpoints by id, in one query; ids not stored are left out."""
    rows = (dict(zip(_KEYS, row)) for row in _BY_IDS.execute(connection, list(touchpoint_ids)))
    return {row["touchpoint_id"]: _touchpoint(row) for row in rows}


def _touchpoint(row: Mapping[str, Any]) -> Touchpoint:
    return Touchpoint(
        touchpoint_id=row["touchpoint_id"],
        source_id=row["source_id"],
        message_id=row["message_id"],
        kind=row["kind"],
        event=row["event"],
        stage=row["stage"],
        moment=row["moment"],
        occurred_at=row["occurred_at"],
        received_at=row["received_at"],
        identifiers=tuple(Identifier(type_, value) for type_, value in row["identifiers"]),
        properties=row["properties"],
        traits=row["traits"],
        context=row["context"],
        mapping_version=row["mapping_version"],
    )


def summaries(connection: Connection, touchpoint_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Short views of the touchpoints a decision rests on, in the order given; emails and phone numbers in
    their properties masked, as in the delivery log the same view shows."""
    rows = connection.execute(
        select(
            touchpoints.c.touchpoint_id, touchpoints.c.event, touchpoints.c.stage, touchpoints.c.moment,
            touchpoints.c.occurred_at, touchpoints.c.source_id, touchpoints.c.properties,
        ).where(touchpoints.c.touchpoint_id.in_(list(touchpoint_ids)))
    ).mappings()
    by_id = {row["touchpoint_id"]: {**row, "properties": mask_value(row["properties"])} for row in rows}
    return [by_id[tp_id] for tp_id in touchpoint_ids if tp_id in by_id]


Order = Literal["received", "occurred"]
# Newest first either way, the other time breaking ties, then the id. A profile's timeline is by when each event
# occurred: offline and backfilled events arrive late, and by receipt yesterday's order would sit above today's page view.
PAGES: dict[Order, Keyset] = {
    "received": Keyset(
        "touchpoints by received", (touchpoints.c.received_at, touchpoints.c.occurred_at, touchpoints.c.touchpoint_id)
    ),
    "occurred": Keyset(
        "touchpoints by occurred", (touchpoints.c.occurred_at, touchpoints.c.received_at, touchpoints.c.touchpoint_id)
    ),
}


def search(
    connection: Connection,
    *,
    limit: int,
    source_id: str | None = None,
    event: str | None = None,
    profile_id: str | None = None,
    order: Order = "received",
    after: Key | None = None,
) -> list[dict[str, Any]]:
    """Newest first, by the time the hub received them or (`order="occurred"`) the time they occurred; `after` is
    the key (`PAGES[order]`) of the last touchpoint of the page before."""
    query = PAGES[order].newest_first(select(touchpoints), after).limit(limit)
    if source_id:
        query = query.where(touchpoints.c.source_id == source_id)
    if event:
        query = query.where(touchpoints.c.event == event)
    if profile_id:
        query = query.where(touchpoints.c.profile_id == profile_id)
    return [dict(row) for row in connection.execute(query).mappings()]


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(touchpoints)).scalar_one()
