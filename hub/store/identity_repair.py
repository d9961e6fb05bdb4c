"""Undoing identity: unmerge a bad link, and forget a person on request.

Unmerge reverses one merge: the identifiers the merged profile brought in
(including those of profiles that had merged into it before) go back to it,
the touchpoints that carried only those identifiers follow them, traits are
rebuilt from each side's touchpoints, consent a person gave or withdrew
through a provider goes to the side that keeps the identifier it came
through, and the pair is kept apart so the next
event carrying the same bad link cannot merge them again. A touchpoint that
carried identifiers of both sides (usually the one that made the bad link)
stays with the survivor, and so does an identifier first seen after the merge:
it joined the survivor, and nothing says which side it belongs to.

Forgetting erases identifiers, traits and the personal content of touchpoints,
raw inbox payloads and delivery logs, keeping the rows themselves so counts
(events per day, deliveries per channel) still add up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select, update

from hub.errors import IdentityRepairError
from hub.model import Identifier
from hub.store import consent_changes
from hub.store.consent_changes import PINNED_STAMP
from hub.store.identity_graph import identifier_digest
from hub.store.profile_views import live_profile_id
from hub.store.traits import newest_traits, stamped_traits, with_part_times
from hub.store.schema import (
    attempts,
    decisions,
    deliveries,
    forgotten_identifiers,
    identifiers,
    identity_events,
    inbox,
    kept_apart,
    merges,
    profiles,
    timers,
    touchpoints,
)
from hub.store.sql import insert_ignoring_conflicts, lock_profiles

UNMERGE_RULE = "unmerge requested by an operator"
FORGOTTEN_TARGET = "(forgotten)"


def unmerge(connection: Connection, profile_id: str, merged_profile_id: str, now: datetime) -> dict[str, Any]:
    """Split `merged_profile_id` back out of the live profile of `profile_id`; returns what moved."""
    lock_profiles(connection)
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        raise IdentityRepairError(f"no profile {profile_id!r}")
    merge = connection.execute(
        select(merges).where(merges.c.merged_id == merged_profile_id).order_by(merges.c.id.desc()).limit(1)
    ).mappings().first()
    if merge is None or live_profile_id(connection, merged_profile_id) != live_id or merged_profile_id == live_id:
        raise IdentityRepairError(f"profile {merged_profile_id!r} was not merged into {live_id!r}")
    split = _merged_before(connection, merged_profile_id, merge["id"])
    moved = [
        Identifier(type_, value)
        for type_, value in connection.execute(
            select(identifiers.c.type, identifiers.c.value).where(
                identifiers.c.profile_id == live_id, identifiers.c.origin_profile_id.in_(split)
            )
        )
    ]
    connection.execute(
        update(identifiers)
        .where(identifiers.c.profile_id == live_id, identifiers.c.origin_profile_id.in_(split))
        .values(profile_id=merged_profile_id)
    )
    connection.execute(update(profiles).where(profiles.c.profile_id == merged_profile_id).values(merged_into=None, updated_at=now))
    connection.execute(
        update(profiles).where(profiles.c.profile_id.in_(split - {merged_profile_id})).values(merged_into=merged_profile_id)
    )
    moved_touchpoints = _reattribute_touchpoints(connection, live_id, merged_profile_id, set(moved))
    _rebuild_traits(connection, live_id, merged_profile_id, moved, now)
    a, b = sorted((live_id, merged_profile_id))
    insert_ignoring_conflicts(connection, kept_apart, [{"profile_a": a, "profile_b": b, "since": now}], ["profile_a", "profile_b"])
    connection.execute(
        insert(identity_events).values(
            kind="unmerge", profile_id=live_id, other_profile_id=merged_profile_id, touchpoint_id=merge["touchpoint_id"],
            identifiers=[[i.type, i.value] for i in moved], rule=UNMERGE_RULE, at=now,
        )
    )
    return {
        "profile_id": live_id,
        "restored_profile_id": merged_profile_id,
        "identifiers": [[i.type, i.value] for i in moved],
        "touchpoints": moved_touchpoints,
    }


def _merged_before(connection: Connection, root: str, merge_id: int) -> set[str]:
    """`root` and every profile that had merged into it (directly or not) before merge `merge_id`."""
    found = {root}
    frontier = {root}
    while frontier:
        frontier = set(
            connection.execute(
                select(merges.c.merged_id).where(merges.c.survivor_id.in_(frontier), merges.c.id < merge_id)
            ).scalars()
        ) - found
        found |= frontier
    return found


def _reattribute_touchpoints(connection: Connection, live_id: str, restored_id: str, moved: set[Identifier]) -> int:
    rows = connection.execute(
        select(touchpoints.c.touchpoint_id, touchpoints.c.identifiers).where(touchpoints.c.profile_id == live_id)
    ).all()
    following = []
    for touchpoint_id, carried in rows:
        idents = {Identifier(type_, value) for type_, value in carried}
        if idents and idents <= moved:
            following.append(touchpoint_id)
    if following:
        connection.execute(
            update(touchpoints).where(touchpoints.c.touchpoint_id.in_(following)).values(profile_id=restored_id)
        )
        # The decisions those touchpoints made, their deliveries and the timers they armed go back with them (a
        # merge moved them); found among the survivor's (the profile_id indexes), not over the whole tables.
        connection.execute(
            update(timers)
            .where(timers.c.profile_id == live_id, timers.c.touchpoint_id.in_(following))
            .values(profile_id=restored_id)
        )
        made = and_(decisions.c.profile_id == live_id, decisions.c.touchpoint_id.in_(following))
        connection.execute(
            update(deliveries)
            .where(deliveries.c.profile_id == live_id, deliveries.c.decision_id.in_(select(decisions.c.decision_id).where(made)))
            .values(profile_id=restored_id)
        )
        connection.execute(update(decisions).where(made).values(profile_id=restored_id))
    return len(following)


def _rebuild_traits(connection: Connection, live_id: str, restored_id: str, moved: list[Identifier], now: datetime) -> None:
    """Each side's traits from its own touchpoints, and each side's consent from what was said through its
    identifiers; other traits no touchpoint set (written through the API) stay with the survivor."""
    current = connection.execute(select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == live_id)).one()
    restored = _traits_from_touchpoints(connection, restored_id)
    remaining = _traits_from_touchpoints(connection, live_id)
    from_touchpoints = set(restored[0]) | set(remaining[0])
    kept_keys = [k for k in current.traits if k not in from_touchpoints or current.trait_times.get(k) == PINNED_STAMP]
    kept = ({k: current.traits[k] for k in kept_keys}, with_part_times(current.trait_times, kept_keys))
    said_by_survivor, said_by_restored = consent_changes.split(connection, live_id, restored_id, moved)
    kept = consent_changes.pinned(kept, said_by_survivor, gone=said_by_restored.keys() - said_by_survivor.keys())
    survivor = consent_changes.pinned(newest_traits(kept, remaining), said_by_survivor)
    restored = consent_changes.pinned(restored, said_by_restored)
    for profile_id, (values, times) in ((live_id, survivor), (restored_id, restored)):
        connection.execute(
            update(profiles).where(profiles.c.profile_id == profile_id).values(traits=values, trait_times=times, updated_at=now)
        )


def _traits_from_touchpoints(connection: Connection, profile_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    traits: tuple[dict[str, Any], dict[str, str]] = ({}, {})
    rows = connection.execute(
        select(touchpoints.c.traits, touchpoints.c.occurred_at)
        .where(touchpoints.c.profile_id == profile_id)
        .order_by(touchpoints.c.occurred_at)
    )
    for values, occurred_at in rows:
        traits = newest_traits(traits, stamped_traits(values, occurred_at))
    return traits


def forget(connection: Connection, profile_id: str, now: datetime, block_identifiers: bool) -> dict[str, Any]:
    """Erase a person: identifiers, traits and personal content; returns the counts kept."""
    lock_profiles(connection)
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        raise IdentityRepairError(f"no profile {profile_id!r}")
    ids = [live_id, *connection.execute(select(profiles.c.profile_id).where(profiles.c.merged_into == live_id)).scalars()]
    erased = [
        Identifier(type_, value)
        for type_, value in connection.execute(
            select(identifiers.c.type, identifiers.c.value).where(identifiers.c.profile_id == live_id)
        )
    ]
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
    delivery_ids = list(connection.execute(select(deliveries.c.delivery_id).where(deliveries.c.profile_id == live_id)).scalars())
    connection.execute(
        update(deliveries).where(deliveries.c.profile_id == live_id).values(target=FORGOTTEN_TARGET, content={}, last_error=None)
    )
    connection.execute(
        update(attempts)
        .where(attempts.c.delivery_id.in_(delivery_ids))
        .values(request_summary={}, response_summary={}, error_message=None)
    )
    # Audit rows keep the fact of a merge or refusal, never the values that caused it.
    connection.execute(update(merges).where(merges.c.survivor_id.in_(ids)).values(linking_identifiers=[]))
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


def forget_inbox_payloads(connection: Connection, inbox_ids: list[int]) -> None:
    """Drop raw event bodies; the inbox rows stay for counts and deduplication."""
    connection.execute(update(inbox).where(inbox.c.id.in_(inbox_ids)).values(payload={}))
