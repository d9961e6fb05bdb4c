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
content names the key under `ERASURE`, and the record type only when the
update named one (`params.sobject`): otherwise the sending destination's own
default is the type its updates wrote, which the forgetting node (an API node
without the CRM's settings) cannot know. An erasure waits, at its claim, for
any delivery to the same record still in flight (`hub.store.merged_targets`):
sent first, its DELETE found nothing and the upsert then made the record.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from hub.model import ERASURE, PlannedDelivery, derived_id
from hub.store.schema import deliveries


def plan_erasures(
    connection: Connection, profile_ids: Collection[str], destination_ids: Collection[str], forget_id: str,
    now: datetime,
) -> list[PlannedDelivery]:
    """The erasures of the records these profiles' updates may have written in the `destination_ids`; read
    before forget wipes the deliveries. `forget_id` is their decision id: the one request they all answer.

    A record's key is the update's target or its profile: the engine sends an
    update planned for a profile merged into another since to the survivor's
    id. Only keys among `profile_ids` count: after an unmerge, an update of
    this person's sent while the two were one went to the other person's
    record, which stays theirs.
    """
    if not destination_ids:
        return []
    rows = connection.execute(
        select(deliveries.c.destination_id, deliveries.c.channel, deliveries.c.profile_id, deliveries.c.target,
               deliveries.c.content)
        .where(
            deliveries.c.profile_id.in_(sorted(profile_ids)), deliveries.c.destination_id.in_(sorted(destination_ids)),
            or_(deliveries.c.attempts > 0, deliveries.c.claimed_until > now),  # sent and delivered ones have attempts
        )
    ).all()
    keys = set(profile_ids)
    records = {
        (row.destination_id, row.channel, _record_type(row.content), key)
        for row in rows for key in {row.target, row.profile_id} & keys
    }
    return [
        PlannedDelivery(
            derived_id("erasure", destination_id, sobject, key), forget_id, key, channel, destination_id, key,
            {ERASURE: {"external_id": key, **({"sobject": sobject} if sobject else {})}},
        )
        for destination_id, channel, sobject, key in sorted(records)
    ]


def _record_type(content: dict[str, Any]) -> str:
    """The record type an update named (its action's `params.sobject`); empty: the destination's default."""
    params = content.get("params")
    return (params.get("sobject") if isinstance(params, dict) else None) or ""
