"""Forgetting a person on request (the right to be forgotten).

Forgetting erases identifiers, traits and the personal content of touchpoints,
raw inbox payloads and delivery logs, keeping the rows themselves so counts
(events per day, deliveries per channel) still add up. Messages not yet sent
to the person are withdrawn, and their identifiers are taken out of other
people's touchpoints that carried them (a bad link an unmerge undid), and
quarantined bodies holding their addresses are wiped. With
blocking on, each identifier's digest joins a blocklist, so an old install
sending the same email cannot bring the person back (`hub.identity`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from hub.model import Identifier
from hub.pii import address_values, without_values
from hub.store import consent_changes, outbox, quarantine
from hub.store.identity_graph import identifier_digest
from hub.store.identity_repair import held_by, locked_live_profile
from hub.store.profile_views import aliases_of
from hub.store.schema import (
    attempts,
    deliveries,
    forgotten_identifiers,
    identifiers,
    identity_events,
    inbox,
    merges,
    profiles,
    touchpoints,
)
from hub.store.sql import insert_ignoring_conflicts
from hub.store.traits import with_part_times

FORGOTTEN_REASON = "not sent: profile forgotten"


def forget(connection: Connection, profile_id: str, now: datetime, block_identifiers: bool) -> dict[str, Any]:
    """Erase a person: identifiers, traits and personal content; returns the counts kept."""
    live_id = locked_live_profile(connection, profile_id)
    ids = [live_id, *sorted(aliases_of(connection, [live_id]).get(live_id, ()))]
    erased = held_by(connection, live_id)
    connection.execute(delete(identifiers).where(identifiers.c.profile_id == live_id))
    if block_identifiers:
        insert_ignoring_conflicts(
            connection, forgotten_identifiers,
            [{"digest": identifier_digest(ident), "forgotten_at": now} for ident in erased], ["digest"],
        )
    inbox_ids = list(connection.execute(select(touchpoints.c.inbox_id).where(touchpoints.c.profile_id == live_id)).scalars())
    wiped = connection.execute(
        update(touchpoints)
        .where(touchpoints.c.profile_id == live_id)
        .values(identifiers=[], properties={}, traits={}, context={})
    ).rowcount
    forget_inbox_payloads(connection, inbox_ids)
    _scrub_carried_elsewhere(connection, _carried_elsewhere(connection, ids), erased)
    quarantine.forget_holding(connection, address_values(erased))
    statuses = dict(connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.status).where(deliveries.c.profile_id.in_(ids))
    ).all())
    delivery_ids = list(statuses)
    connection.execute(
        update(deliveries).where(deliveries.c.profile_id.in_(ids)).values(target=outbox.FORGOTTEN_TARGET, content={}, last_error=None)
    )
    # The messages still to go (due, held, dead) never go: their address and content are gone, and the person
    # asked to hear nothing more (as deleting a subscriber in Novu cancels what was queued for them).
    unsent = [delivery_id for delivery_id, status in statuses.items() if status in outbox.UNSENT_STATUSES]
    outbox.withdraw(connection, unsent, now, FORGOTTEN_REASON)
    connection.execute(
        update(attempts)
        .where(attempts.c.delivery_id.in_(delivery_ids))
        .values(request_summary={}, response_summary={}, error_message=None)
    )
    # Audit rows keep the fact of a merge or refusal, never the values that caused it.
    # Rows where the person is the merged side too: an unmerge split them off a survivor that is not forgotten.
    connection.execute(
        update(merges).where(or_(merges.c.survivor_id.in_(ids), merges.c.merged_id.in_(ids))).values(linking_identifiers=[])
    )
    connection.execute(update(identity_events).where(identity_events.c.profile_id.in_(ids)).values(identifiers=[]))
    connection.execute(update(identity_events).where(identity_events.c.other_profile_id.in_(ids)).values(identifiers=[]))
    consent_changes.forget(connection, ids)
    connection.execute(delete(profiles).where(profiles.c.profile_id.in_(ids)))
    connection.execute(
        insert(identity_events).values(
            kind="forget", profile_id=live_id, other_profile_id=None, touchpoint_id=None,
            identifiers=[[ident.type, "(erased)"] for ident in erased], rule="right to be forgotten", at=now,
        )
    )
    return {"profile_id": live_id, "identifiers": len(erased), "touchpoints": wiped, "deliveries": len(delivery_ids)}


def _carried_elsewhere(connection: Connection, profile_ids: list[str]) -> list[str]:
    """Touchpoints of other people that carried these profiles' identifiers: the one that merged a profile into
    a survivor (an unmerge leaves it with the survivor) and those whose link to one was refused (kept apart, a
    limit). The audit trail names each, so none is looked for among all touchpoints."""
    linked_by = select(merges.c.touchpoint_id).where(merges.c.merged_id.in_(profile_ids)).union(
        select(identity_events.c.touchpoint_id).where(identity_events.c.other_profile_id.in_(profile_ids))
    )
    return list(connection.execute(
        select(touchpoints.c.touchpoint_id)
        .where(touchpoints.c.touchpoint_id.in_(linked_by), touchpoints.c.profile_id.not_in(profile_ids))
    ).scalars())


def _scrub_carried_elsewhere(connection: Connection, touchpoint_ids: list[str], erased: list[Identifier]) -> None:
    """Take the erased identifiers out of other people's touchpoints that carried them, and their values out of
    those touchpoints' fields and their owners' traits (which may have taken them from such a touchpoint).

    The raw payloads of those events are dropped whole, as the person's own
    are: a raw body holds the value as the sender wrote it, which may differ
    from the normalized identifier. Fields are matched on the normalized value
    in any case, and a phone also however it is written (`hub.pii.without_values`).
    """
    if not touchpoint_ids or not erased:
        return
    pairs = {(ident.type, ident.value) for ident in erased}
    values = address_values(erased)
    rows = connection.execute(
        select(touchpoints.c.touchpoint_id, touchpoints.c.profile_id, touchpoints.c.inbox_id, touchpoints.c.identifiers,
               touchpoints.c.properties, touchpoints.c.traits, touchpoints.c.context)
        .where(touchpoints.c.touchpoint_id.in_(touchpoint_ids))
    ).all()
    for row in rows:
        connection.execute(update(touchpoints).where(touchpoints.c.touchpoint_id == row.touchpoint_id).values(
            identifiers=[pair for pair in row.identifiers if tuple(pair) not in pairs],
            properties=without_values(row.properties, values), traits=without_values(row.traits, values),
            context=without_values(row.context, values),
        ))
    forget_inbox_payloads(connection, [row.inbox_id for row in rows if row.inbox_id is not None])
    for profile_id in {row.profile_id for row in rows}:
        _scrub_traits(connection, profile_id, values)


def _scrub_traits(connection: Connection, profile_id: str, values: set[str]) -> None:
    """The profile's traits without the erased values; the traits left keep their times."""
    current = connection.execute(
        select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == profile_id)
    ).first()
    if current is None:
        return
    kept = without_values(current.traits, values)
    if kept != current.traits:
        connection.execute(update(profiles).where(profiles.c.profile_id == profile_id).values(
            traits=kept, trait_times=with_part_times(current.trait_times, list(kept)),
        ))


def forget_inbox_payloads(connection: Connection, inbox_ids: list[int]) -> None:
    """Drop raw event bodies; the inbox rows stay for counts and deduplication."""
    connection.execute(update(inbox).where(inbox.c.id.in_(inbox_ids)).values(payload={}))
