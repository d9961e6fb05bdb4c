"""Erasing a forgotten person's records in the CRM: the deliveries `hub.store.forget` plans for them.

Forgetting a person erased them in the hub, but the Lead (or Contact) the hub
upserted for them, keyed by an external-id field holding a profile id of
theirs, stayed in the CRM with their name, email and phone. As Segment
forwards a deletion to the destinations that can delete ("Suppress with
Delete"), forget plans one erasure per record the hub may have written: per
destination that erases, record type and key, wherever an update to it was
attempted (a failed attempt counts: its answer may have been lost after the
CRM wrote the record) or is in flight.

An erasure is an outbox row like any other, planned in forget's transaction
(durable before the 2xx), so the delivery engine sends it with retries, the
circuit breaker, the dead-letter queue and the delivery log. It carries no
personal data: its target and `profile_id` are the record's key (a profile
id: never `FORGOTTEN_TARGET`, so a dead one may be replayed, and a key equal
to its profile is never readdressed by `hub.store.merged_targets`), and its
content names the record type and key under `ERASURE` only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from hub.model import ERASURE, PlannedDelivery, derived_id
from hub.store.schema import deliveries



def plan_erasures(
    connection: Connection, profile_ids: Collection[str], record_types: Mapping[str, str], forget_id: str, now: datetime
) -> list[PlannedDelivery]:
    """The erasures of the records these profiles' updates may have written, in the destinations of
    `record_types` (destination id -> the record type an update without `params.sobject` wrote); read before
    forget wipes the deliveries. `forget_id` is their decision id: the one request they all answer.

    A record's key is the update's target or its profile: the engine sends an
    update planned for a profile merged into another since to the survivor's
    id. Only keys among `profile_ids` count: after an unmerge, an update of
    this person's sent while the two were one went to the other person's
    record, which stays theirs. An erasure of a record whose update is still
    in flight waits until that send's lease ends: sent at once, it could
    reach the CRM before the upsert that creates the record.
    """
    if not record_types:
        return []
    rows = connection.execute(
        select(deliveries.c.destination_id, deliveries.c.channel, deliveries.c.profile_id, deliveries.c.target,
               deliveries.c.content, deliveries.c.claimed_until)
        .where(
            deliveries.c.profile_id.in_(sorted(profile_ids)), deliveries.c.destination_id.in_(sorted(record_types)),
            or_(deliveries.c.attempts > 0, deliveries.c.claimed_until > now),  # sent and delivered ones have attempts
        )
    ).all()
    keys = set(profile_ids)
    due: dict[tuple[str, str, str, str], datetime | None] = {}
    for row in rows:
        sobject = _record_type(row.content, record_types[row.destination_id])
        in_flight_until = row.claimed_until if row.claimed_until is not None and row.claimed_until > now else None
        for key in {row.target, row.profile_id} & keys:
            erasure = (row.destination_id, row.channel, sobject, key)
            due[erasure] = _later(due.get(erasure), in_flight_until)
    return [
        PlannedDelivery(
            derived_id("erasure", destination_id, sobject, key), forget_id, key, channel, destination_id, key,
            {ERASURE: {"sobject": sobject, "external_id": key}}, due[(destination_id, channel, sobject, key)],
        )
        for destination_id, channel, sobject, key in sorted(due)
    ]


def _record_type(content: dict[str, Any], default: str) -> str:
    """The record type an update wrote: its action's `params.sobject`, else the destination's."""
    params = content.get("params")
    return (params.get("sobject") if isinstance(params, dict) else None) or default


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    return max((moment for moment in (first, second) if moment is not None), default=None)
