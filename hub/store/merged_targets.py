"""Deliveries addressed to a profile go to the profile they belong to when they are sent.

Routes whose target is `profile_id` (CRM updates, the chat widget, outbound
webhooks) name the profile a decision was about when it was planned. A merge
repoints the delivery's `profile_id` to the survivor (`FOLLOWING_MERGES`) and
an unmerge moves it back with its touchpoint, but the target it was planned
with stayed: the CRM upsert then wrote to, or created, a Lead under an id the
hub no longer answers for (or, after an unmerge, the other person's), and the
survivor's next update created a second Lead for the same person.

This runs in the delivery claim's transaction and reads the profiles as they
are then, rather than rewriting targets wherever profiles merge or split. A
claim whose deliveries are addressed to their own profiles reads nothing,
except that a destination keeping a record per profile (Salesforce) has the
ids merged into the profile looked up, in one indexed read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sqlalchemy import Connection, select, update

from hub.model import Delivery
from hub.store.profile_views import aliases_of, live_profile_ids
from hub.store.schema import deliveries

# A delivery in one of these under the survivor's own id means the provider keeps a record keyed by it.
_WENT_THROUGH = ("sent", "delivered")


def follow_merges(
    connection: Connection,
    claimed: list[Delivery],
    addressed_to_profile: Callable[[Delivery], bool],
    keeps_records: Callable[[str], bool],
) -> list[Delivery]:
    """`claimed`, with each delivery addressed to a profile other than its own now addressed to its own (the row
    too, so the delivery log shows where it went), and, for destinations that keep a record per profile
    (`keeps_records(destination_id)`), the ids merged into its profile that earlier deliveries went to
    (`Delivery.previous_targets`), until one under the profile's own id has gone through."""
    to_profiles = [delivery for delivery in claimed if addressed_to_profile(delivery)]
    if not to_profiles:
        return claimed
    moved = _readdressed(connection, to_profiles)
    previous = _previous_targets(connection, [d for d in to_profiles if keeps_records(d.destination_id)])
    if not moved and not previous:
        return claimed
    return [
        replace(d, target=d.profile_id, previous_targets=previous.get((d.destination_id, d.profile_id), ()))
        if d.delivery_id in moved or (d.destination_id, d.profile_id) in previous else d
        for d in claimed
    ]


def _readdressed(connection: Connection, to_profiles: Sequence[Delivery]) -> set[str]:
    """The deliveries of `to_profiles` whose target names another profile (one merged into theirs since, or
    the other side of an unmerge), their rows' targets set to their own profiles."""
    strays = sorted({d.target for d in to_profiles if d.target != d.profile_id})
    if not strays:
        return set()
    profiles = live_profile_ids(connection, strays)  # only ids of a profile: a target that names none is kept
    moved = {d.delivery_id for d in to_profiles if d.target != d.profile_id and d.target in profiles}
    if moved:
        connection.execute(
            update(deliveries).where(deliveries.c.delivery_id.in_(sorted(moved))).values(target=deliveries.c.profile_id)
        )
    return moved


def _previous_targets(connection: Connection, keyed: Sequence[Delivery]) -> dict[tuple[str, str], tuple[str, ...]]:
    """For each (destination, profile) of `keyed`: the ids merged into the profile that deliveries to that
    destination were attempted for, none once a delivery under the profile's own id went through. A failed
    attempt counts: its answer may have been lost after the provider wrote the record."""
    aliases = aliases_of(connection, sorted({d.profile_id for d in keyed})) if keyed else {}
    if not aliases:
        return {}
    merged_into = [d for d in keyed if d.profile_id in aliases]
    rows = connection.execute(
        select(deliveries.c.destination_id, deliveries.c.profile_id, deliveries.c.target, deliveries.c.status)
        .where(
            deliveries.c.profile_id.in_(sorted(aliases)),
            deliveries.c.destination_id.in_(sorted({d.destination_id for d in merged_into})),
            deliveries.c.target.in_(sorted(set(aliases).union(*aliases.values()))),
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
