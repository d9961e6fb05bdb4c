"""Deliveries addressed to a profile follow it through the merges made after they were planned.

Routes whose target is `profile_id` (CRM updates, the chat widget, outbound
webhooks) name the profile a decision was about when it was planned. A merge
repoints the delivery's `profile_id` to the survivor (`FOLLOWING_MERGES`), but
the target it was planned with stayed the merged-in id: the CRM upsert then
wrote to, or created, a Lead under an id the hub no longer answers for, and
the survivor's next update created a second Lead for the same person.

This runs in the delivery claim's transaction and reads the merges as they
are then, rather than rewriting targets when profiles merge: an unmerge needs
nothing of its own, since a profile split off again is nobody's alias. A claim
of deliveries whose profiles nothing was merged into, the common case, costs
one indexed read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sqlalchemy import Connection, select, update

from hub.model import Delivery
from hub.store.profile_views import aliases_of
from hub.store.schema import deliveries

# A delivery in one of these under the survivor's own id means the provider keeps a record keyed by it.
_WENT_THROUGH = ("sent", "delivered")


def follow_merges(
    connection: Connection,
    claimed: list[Delivery],
    addressed_to_profile: Callable[[Delivery], bool],
    keeps_records: Callable[[str], bool],
) -> list[Delivery]:
    """`claimed`, with each delivery addressed to a profile since merged into its own now addressed to the
    survivor (the row too, so the delivery log shows where it went), and, for destinations that keep a record
    per profile (`keeps_records(destination_id)`), the merged-in ids earlier deliveries went to
    (`Delivery.previous_targets`) until one under the survivor's own id has gone through."""
    to_profiles = [delivery for delivery in claimed if addressed_to_profile(delivery)]
    if not to_profiles:
        return claimed
    aliases = aliases_of(connection, sorted({delivery.profile_id for delivery in to_profiles}))
    if not aliases:
        return claimed
    moved = {d.delivery_id for d in to_profiles if d.target in aliases.get(d.profile_id, ())}
    if moved:
        connection.execute(
            update(deliveries).where(deliveries.c.delivery_id.in_(sorted(moved))).values(target=deliveries.c.profile_id)
        )
    previous = _previous_targets(
        connection, [d for d in to_profiles if d.profile_id in aliases and keeps_records(d.destination_id)], aliases
    )
    return [
        replace(d, target=d.profile_id, previous_targets=previous.get((d.destination_id, d.profile_id), ()))
        if d.delivery_id in moved or (d.destination_id, d.profile_id) in previous else d
        for d in claimed
    ]


def _previous_targets(
    connection: Connection, keyed: Sequence[Delivery], aliases: dict[str, set[str]]
) -> dict[tuple[str, str], tuple[str, ...]]:
    """For each (destination, survivor) of `keyed`: the aliases deliveries to that destination were attempted
    for, none once a delivery under the survivor's own id went through. A failed attempt counts: its answer may
    have been lost after the provider wrote the record."""
    if not keyed:
        return {}
    survivors = {d.profile_id for d in keyed}
    rows = connection.execute(
        select(deliveries.c.destination_id, deliveries.c.profile_id, deliveries.c.target, deliveries.c.status)
        .where(
            deliveries.c.profile_id.in_(sorted(survivors)),
            deliveries.c.destination_id.in_(sorted({d.destination_id for d in keyed})),
            deliveries.c.target.in_(sorted(survivors.union(*(aliases[s] for s in survivors)))),
            deliveries.c.attempts > 0,
        )
        .distinct()
    )
    tried: dict[tuple[str, str], set[str]] = {}
    settled: set[tuple[str, str]] = set()
    for destination_id, profile_id, target, status in rows:
        key = (destination_id, profile_id)
        if target == profile_id:
            if status in _WENT_THROUGH:
                settled.add(key)
        elif target in aliases[profile_id]:
            tried.setdefault(key, set()).add(target)
    return {key: tuple(sorted(targets)) for key, targets in tried.items() if key not in settled}

