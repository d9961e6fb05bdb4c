"""Deliveries addressed to a profile go to the profile they belong to when they are sent.

Routes whose target is `profile_id` (CRM updates, the chat widget, outbound
webhooks) name the profile a decision was about when it was planned. A merge
repoints the delivery's `profile_id` to the survivor (`FOLLOWING_MERGES`) and
an unmerge moves it back with its touchpoint, but the target it was planned
with stays: the CRM upsert then wrote to, or created, a Lead under an id the
hub no longer answers for, and the survivor's next update created a second
Lead for the same person.

This runs in the delivery claim's transaction and reads the profiles as they
are then, rather than rewriting targets wherever profiles merge or split. The
row keeps the id it was planned for (the delivery log's `target`; the attempt's
request summary shows where it went), which is also the evidence that a
record may exist under a merged-in id: any delivery to the destination planned
for that id and attempted, by this claim or an earlier one, before the merge
or after it. A claim whose deliveries are addressed to their own profiles reads
nothing, except that a destination keeping a record per profile (Salesforce)
has the ids merged into its profiles looked up (one indexed read; one more of
the outbox when there are some).

An erasure of a forgotten person's record (`hub.store.erasures`) waits the
same way while any delivery of that profile id to its destination is in flight
elsewhere, however long that send's lease is renewed: sent first, its DELETE
found nothing ("already gone": erased) and the upsert then made the record for
good. Only a claim with erasures reads for that (the profile id index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, or_, select

from hub.model import ERASURE, Delivery
from hub.store import outbox
from hub.store.profile_views import aliases_of, live_profile_ids
from hub.store.schema import deliveries

log = structlog.get_logger(__name__)

# How long a delivery waits while one to a profile merged into its own is being sent to the same destination
# by another batch: that send may be creating the record this one would otherwise create a second of (or, for
# an erasure, the record it would delete before it exists).
WAIT_FOR_MERGED_SEND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class _Records:
    """What the outbox says of the records a destination may keep for a profile's merged-in ids."""

    previous: dict[tuple[str, str], tuple[str, ...]]  # (destination, profile) -> merged-in ids attempted
    busy: set[tuple[str, str]]  # (destination, profile) with a merged-in id's delivery in flight elsewhere


def follow_merges(
    connection: Connection,
    claimed: list[Delivery],
    now: datetime,
    addressed_to_profile: Callable[[Delivery], bool],
    keeps_records: Callable[[str], bool],
) -> list[Delivery]:
    """The claimed deliveries to send, each addressed to a profile other than its own now addressed to its own;
    for destinations that keep a record per profile (`keeps_records(destination_id)`), with the ids merged into
    its profile that earlier deliveries to it were attempted for (`Delivery.previous_targets`). One whose
    profile has a merged-in id's delivery to the same destination in flight goes back to the outbox for
    `WAIT_FOR_MERGED_SEND`, no attempt spent; so does an erasure whose record has a delivery in flight."""
    to_profiles = [delivery for delivery in claimed if addressed_to_profile(delivery)]
    if not to_profiles:
        return claimed
    moved = _readdressed(connection, to_profiles)
    records = _records(connection, [d for d in to_profiles if keeps_records(d.destination_id)], claimed, now)
    waiting = {d.delivery_id for d in to_profiles if (d.destination_id, d.profile_id) in records.busy}
    waiting |= _erasures_of_records_in_flight(connection, to_profiles, claimed, now)
    for delivery_id in sorted(waiting):
        outbox.defer(connection, delivery_id, now + WAIT_FOR_MERGED_SEND)
    if waiting:
        log.info("deliveries wait for a send in flight to the same record", deliveries=len(waiting))
    to_send = []
    for delivery in claimed:
        key = (delivery.destination_id, delivery.profile_id)
        if delivery.delivery_id in waiting:
            continue
        if delivery.delivery_id in moved or key in records.previous:
            delivery = replace(delivery, target=delivery.profile_id, previous_targets=records.previous.get(key, ()))
        to_send.append(delivery)
    return to_send


def _readdressed(connection: Connection, to_profiles: Sequence[Delivery]) -> set[str]:
    """The deliveries of `to_profiles` whose target names another profile: one merged into theirs since, or
    the other side of an unmerge."""
    strays = sorted({d.target for d in to_profiles if d.target != d.profile_id})
    if not strays:
        return set()
    profiles = live_profile_ids(connection, strays)  # only ids of a profile: a target that names none is kept
    return {d.delivery_id for d in to_profiles if d.target != d.profile_id and d.target in profiles}


def _records(connection: Connection, keyed: Sequence[Delivery], claimed: Sequence[Delivery], now: datetime) -> _Records:
    """For each (destination, profile) of `keyed` whose profile others were merged into: those merged-in ids
    that deliveries to the destination were attempted for (a failed attempt counts: its answer may have been
    lost after the provider wrote the record), and whether one of theirs is in flight outside this claim."""
    aliases = aliases_of(connection, sorted({d.profile_id for d in keyed})) if keyed else {}
    if not aliases:
        return _Records({}, set())
    this_claim = {d.delivery_id for d in claimed}
    rows = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.destination_id, deliveries.c.profile_id, deliveries.c.target,
               deliveries.c.attempts, deliveries.c.status, deliveries.c.claimed_until)
        .where(
            deliveries.c.profile_id.in_(sorted(aliases)),
            deliveries.c.destination_id.in_(sorted({d.destination_id for d in keyed if d.profile_id in aliases})),
            deliveries.c.target.in_(sorted(set().union(*aliases.values()))),
            or_(deliveries.c.attempts > 0, deliveries.c.claimed_until > now),
        )
    )
    tried: dict[tuple[str, str], set[str]] = {}
    busy: set[tuple[str, str]] = set()
    for delivery_id, destination_id, profile_id, target, attempts, status, claimed_until in rows:
        key = (destination_id, profile_id)
        if attempts:
            tried.setdefault(key, set()).add(target)
        in_flight = status in outbox.DUE_STATUSES and claimed_until is not None and claimed_until > now
        if in_flight and delivery_id not in this_claim:
            busy.add(key)
    return _Records({key: tuple(sorted(targets)) for key, targets in tried.items()}, busy)


def _erasures_of_records_in_flight(
    connection: Connection, to_profiles: Sequence[Delivery], claimed: Sequence[Delivery], now: datetime
) -> set[str]:
    """The erasures among `to_profiles` whose record (destination, key) a delivery of the key's profile outside
    this claim is being sent to: leased, whatever its status (forget withdraws the person's update in flight,
    and its send goes on). Matched by profile only: forget has taken the targets of the person's deliveries."""
    erasures = [d for d in to_profiles if ERASURE in d.content]
    if not erasures:
        return set()
    rows = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.destination_id, deliveries.c.profile_id)
        .where(
            deliveries.c.profile_id.in_(sorted({d.target for d in erasures})),
            deliveries.c.destination_id.in_(sorted({d.destination_id for d in erasures})),
            deliveries.c.claimed_until > now,
        )
    )
    this_claim = {d.delivery_id for d in claimed}
    busy = {(destination_id, profile_id) for delivery_id, destination_id, profile_id in rows if delivery_id not in this_claim}
    return {d.delivery_id for d in erasures if (d.destination_id, d.target) in busy}
