"""Undoing identity: unmerge a bad link (forgetting a person is `hub.store.forget`).

Unmerge reverses one merge: the identifiers the merged profile brought in
(including those of profiles that had merged into it before) go back to it,
the touchpoints that carried, of what either side holds, only those
identifiers follow them, traits are rebuilt from each side's touchpoints,
consent a person gave or withdrew through a provider goes to the side that
keeps the identifier it came through, and the pair is kept apart so the next
event carrying the same bad link cannot merge them again. A touchpoint that
carried identifiers of both sides (usually the one that made the bad link)
stays with the survivor, and so does an identifier first seen after the merge:
it joined the survivor, and nothing says which side it belongs to.
What the two did to each other while one profile is undone too: a trait
naming the other side's identifier is dropped, a timer the other side's event
or nudge ended waits again, and a message still waiting to go, or failed and
so replayable, that was planned for the other side, goes to its address or
carries it (a CRM update rendered from the merged profile) is withdrawn, never
to be replayed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from hub.errors import IdentityRepairError
from hub.identity import meanings_of
from hub.model import Identifier
from hub.pii import address_values, holding, without_values
from hub.store import consent_changes, delivery_replay, outbox, withdrawals
from hub.store.consent_changes import PINNED_STAMP
from hub.store.profile_views import live_profile_id, live_profile_ids
from hub.store.traits import newest_traits, stamped_traits, trait_time, with_part_times
from hub.store.schema import (
    decisions,
    deliveries,
    identifiers,
    identity_events,
    kept_apart,
    merges,
    profiles,
    timers,
    touchpoints,
)
from hub.store.sql import insert_ignoring_conflicts, lock_profiles
from hub.store.timers import ended_by, reopen

UNMERGE_RULE = "unmerge requested by an operator"
# What an unmerge looks through for messages to withdraw: those not sent yet, and those a replay would send.
_WITHDRAWABLE = sorted({*outbox.UNSENT_STATUSES, *delivery_replay.REPLAYABLE_STATUSES})


def unmerge(connection: Connection, profile_id: str, merged_profile_id: str, now: datetime) -> dict[str, Any]:
    """Split `merged_profile_id` back out of the live profile of `profile_id`; returns what moved."""
    live_id = locked_live_profile(connection, profile_id)
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
    held_by_survivor = set(held_by(connection, live_id))
    moved_touchpoints = _reattribute_touchpoints(connection, live_id, merged_profile_id, set(moved), held_by_survivor)
    _rebuild_traits(connection, live_id, merged_profile_id, split, moved, held_by_survivor, now)
    reopened = _reopen_timers_ended_across(connection, (live_id, merged_profile_id))
    withdrawn = _withdraw_misaddressed(connection, {live_id: set(moved), merged_profile_id: held_by_survivor}, now)
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
        "timers_reopened": reopened,
        "deliveries_withdrawn": withdrawn,
    }


def locked_live_profile(connection: Connection, profile_id: str) -> str:
    """The live profile of `profile_id` (it may have been merged), with the profiles lock held: what an operator's
    repair works on. IdentityRepairError if there is none."""
    lock_profiles(connection)
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        raise IdentityRepairError(f"no profile {profile_id!r}")
    return live_id


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


def _reattribute_touchpoints(
    connection: Connection, live_id: str, restored_id: str, moved: set[Identifier], held_by_survivor: set[Identifier]
) -> int:
    """Give the restored side the survivor's touchpoints that were its own; returns how many moved.

    A touchpoint is judged only by what it carried that one of the two sides
    holds now: an identifier whose link was refused (a shared tablet's
    anonymousId, another person's) or that left both since belongs to
    neither, and kept Bo's order on the shared tablet with Ana. An alias's
    previousId is judged by the types it may be (`meanings_of`): it went back
    as the anonymousId it was stored as.
    """
    rows = connection.execute(
        select(touchpoints.c.touchpoint_id, touchpoints.c.identifiers).where(touchpoints.c.profile_id == live_id)
    ).all()
    either = moved | held_by_survivor
    following = []
    for touchpoint_id, carried in rows:
        held = {meaning for pair in carried for meaning in meanings_of(Identifier(*pair)) if meaning in either}
        if held and held <= moved:
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


def _rebuild_traits(
    connection: Connection, live_id: str, restored_id: str, split_off: set[str], moved: list[Identifier],
    held_by_survivor: set[Identifier], now: datetime,
) -> None:
    """Each side's traits from its own touchpoints, and each side's consent from what was said through its
    identifiers or to its profiles (`split_off`: the restored one and those merged into it before); other traits
    no touchpoint set (written through the API) stay with the survivor.

    A trait naming an identifier the other side now holds is left out, so an
    older value takes its place, or none: the touchpoint that made the bad
    link stays with the survivor, and its `email` (the other person's, which
    CRM templates write as `profile.email`) would otherwise be the newest.
    """
    current = connection.execute(select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == live_id)).one()
    moved_values = address_values(moved)
    restored = _traits_from_touchpoints(connection, restored_id, address_values(held_by_survivor))
    remaining = _traits_from_touchpoints(connection, live_id, moved_values)
    from_touchpoints = set(restored[0]) | set(remaining[0])
    own = without_values(current.traits, moved_values)
    kept_keys = [k for k in own if k not in from_touchpoints or current.trait_times.get(k) == PINNED_STAMP]
    kept = ({k: own[k] for k in kept_keys}, with_part_times(current.trait_times, kept_keys))
    said_by_survivor, said_by_restored = consent_changes.split(connection, live_id, restored_id, moved, split_off)
    kept = consent_changes.pinned(kept, said_by_survivor, gone=said_by_restored.keys() - said_by_survivor.keys())
    survivor = consent_changes.pinned(newest_traits(kept, remaining), said_by_survivor)
    restored = consent_changes.pinned(restored, said_by_restored)
    for profile_id, (values, times) in ((live_id, survivor), (restored_id, restored)):
        connection.execute(
            update(profiles).where(profiles.c.profile_id == profile_id).values(traits=values, trait_times=times, updated_at=now)
        )


def _traits_from_touchpoints(
    connection: Connection, profile_id: str, foreign: set[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The profile's traits as its touchpoints set them, newest by event time, without the `foreign` values."""
    traits: tuple[dict[str, Any], dict[str, str]] = ({}, {})
    rows = connection.execute(
        select(touchpoints.c.traits, touchpoints.c.occurred_at, touchpoints.c.received_at)
        .where(touchpoints.c.profile_id == profile_id)
        .order_by(touchpoints.c.occurred_at)
    )
    for values, occurred_at, received_at in rows:
        traits = newest_traits(traits, stamped_traits(without_values(values, foreign), trait_time(occurred_at, received_at)))
    return traits


def held_by(connection: Connection, profile_id: str) -> list[Identifier]:
    """The identifiers a profile holds now, as the store gives them."""
    return [
        Identifier(type_, value)
        for type_, value in connection.execute(
            select(identifiers.c.type, identifiers.c.value).where(identifiers.c.profile_id == profile_id)
        )
    ]


def _reopen_timers_ended_across(connection: Connection, sides: tuple[str, str]) -> int:
    """Reopen the timers of either side that an event or a nudge now on the other side ended while the two
    were one profile (Amy's page view cancelling Bo's cart wait); returns how many.

    Each is pending again, its own side's history alone to judge it: the
    timer worker looks for the follow-up again by event time when it fires
    (`triggers.evaluate_expired`, `timers.ended_by_neighbours`), so one
    overdue fires at once, and one its own side's follow-up also came after
    ends as before. The timers table keeps what ended a timer only in its
    reason (`timers.ended_by`).
    """
    ended = connection.execute(
        select(timers.c.timer_id, timers.c.profile_id, timers.c.reason)
        .where(timers.c.profile_id.in_(sides), timers.c.status.in_(("cancelled", "superseded")))
    ).all()
    causes = {timer_id: (profile_id, cause) for timer_id, profile_id, reason in ended if (cause := ended_by(reason))}
    owners = _owners(connection, [cause for _, cause in causes.values()], sides)
    reopened = [
        timer_id for timer_id, (profile_id, (_, cause_id)) in causes.items() if owners.get(cause_id, profile_id) != profile_id
    ]
    reopen(connection, reopened)
    return len(reopened)


def _owners(connection: Connection, causes: list[tuple[str, str]], sides: tuple[str, str]) -> dict[str, str]:
    """Which of `sides` each ("touchpoint" | "decision", id) belongs to now, by id; those of neither left out."""
    owners: dict[str, str] = {}
    for kind, key, profile_id in (
        ("touchpoint", touchpoints.c.touchpoint_id, touchpoints.c.profile_id),
        ("decision", decisions.c.decision_id, decisions.c.profile_id),
    ):
        ids = {cause_id for cause_kind, cause_id in causes if cause_kind == kind}
        if ids:
            owners.update(connection.execute(select(key, profile_id).where(key.in_(ids), profile_id.in_(sides))).all())
    return owners


def _withdraw_misaddressed(connection: Connection, others: dict[str, set[Identifier]], now: datetime) -> int:
    """Withdraw the messages of either side not yet sent (held for quiet hours, delayed, retrying, or dead) or
    failed, so replayable, that are addressed to the other side or carry its address (`others`: profile id ->
    what the other side holds; the two ids are each other's other side); returns how many.

    Routing picked the profile's newest address while the two were one, so
    Amy's cart nudge may wait for the morning addressed to Bo's email. Such a
    message is not sent rather than routed again: the decision was made on
    the merged profile's history. One that failed (the mail server refused
    it) is withdrawn too, the provider's error kept in its attempt: left
    failed, a replay emailed Bo about Amy's order. A multicast's other
    `recipients` count too, and so does a CRM update planned for the merged
    profile's id: rendered while the two were one, it would write Bo's email
    onto Amy's Lead.
    """
    values = {profile_id: {identifier.value.lower() for identifier in held} for profile_id, held in others.items()}
    carries = {profile_id: holding(address_values(held)) for profile_id, held in others.items()}  # in content
    other_side = dict(zip(others, reversed(list(others))))
    waiting = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.profile_id, deliveries.c.target, deliveries.c.content)
        .where(deliveries.c.profile_id.in_(list(others)), deliveries.c.status.in_(_WITHDRAWABLE))
    ).all()
    planned_for = live_profile_ids(connection, sorted({target for _, _, target, _ in waiting}))
    misaddressed = [
        delivery_id for delivery_id, profile_id, target, content in waiting
        if values[profile_id].intersection(value.lower() for value in [target, *content.get("recipients", ())])
        or planned_for.get(target) == other_side[profile_id]
        or carries[profile_id](json.dumps(content, ensure_ascii=False))
    ]
    return len(withdrawals.withdraw(connection, misaddressed, now, withdrawals.WITHDRAWN_IN_UNMERGE, statuses=_WITHDRAWABLE))
