"""Profiles as routing, consent, the timer engine and the admin API read them: whoever an id (or an alias a
merge left) is now, with traits and identifiers, in a fixed number of statements however many ids.

The identity graph (`hub.store.identity_graph`) writes profiles; these only read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, func, select

from hub.model import Identifier
from hub.store.schema import identifiers, merges, profiles
from hub.store.precompiled import InLists, rows_where_in

T = TypeVar("T")
_LIVE_IDS_OF = rows_where_in(profiles.c.profile_id, profiles.c.profile_id, profiles.c.merged_into)
_PROFILE_ROWS_OF = rows_where_in(
    profiles.c.profile_id, profiles.c.profile_id, profiles.c.created_at, profiles.c.updated_at, profiles.c.traits
)
_IDENTIFIERS_OF = rows_where_in(
    identifiers.c.profile_id, identifiers.c.profile_id, identifiers.c.type, identifiers.c.value,
    order_by=identifiers.c.first_seen_at.desc(),
)
_ALIASES_OF = rows_where_in(profiles.c.merged_into, profiles.c.merged_into, profiles.c.profile_id, order_by=profiles.c.profile_id)


def live_profile_id(connection: Connection, profile_id: str) -> str | None:
    """The surviving profile for an id, which may be an alias left by a merge."""
    return live_profile_ids(connection, [profile_id]).get(profile_id)


def for_live_profile(
    connection: Connection, profile_id: str | None, search: Callable[[Connection, str | None], list[T]]
) -> list[T]:
    """`search` filtered by the surviving profile of `profile_id` (an id merged away since finds what its survivor
    has), or unfiltered without one: how the admin API and the CLI read logs by profile. An id of no profile is
    searched as given: a forgotten person's profile row is gone, but the CRM erasure the forget planned and their
    earlier deliveries keep the id, and ops follow the erasure up by the id they forgot."""
    if not profile_id:
        return search(connection, None)
    return search(connection, live_profile_id(connection, profile_id) or profile_id)


def live_profile_ids(connection: Connection, profile_ids: Sequence[str]) -> dict[str, str]:
    """The surviving profile of each id (ids of no profile left out). One hop is enough: a merge points
    the losers' earlier aliases straight at the survivor."""
    rows = _LIVE_IDS_OF.execute(connection, profile_ids)
    return {profile_id: merged_into or profile_id for profile_id, merged_into in rows}


def aliases_of(connection: Connection, profile_ids: Sequence[str]) -> dict[str, set[str]]:
    """The ids merged into each of these profiles, in one statement (profiles nothing merged into left out)."""
    aliases: dict[str, set[str]] = {}
    for survivor_id, merged_id in _ALIASES_OF.execute(connection, profile_ids):
        aliases.setdefault(survivor_id, set()).add(merged_id)
    return aliases


_CHANGED_SINCE = InLists(lambda ids: select(profiles.c.profile_id, profiles.c.merged_into, profiles.c.traits).where(
    profiles.c.profile_id.in_(ids), profiles.c.updated_at > bindparam("b_since"),
))


def changed_since(connection: Connection, profile_ids: Collection[str], since: datetime) -> dict[str, dict[str, Any] | None]:
    """The traits of those of the profiles the hub changed after `since`, None for one merged away since (its
    survivor holds them): one statement on the primary key, none for no profiles.

    Every write of traits that can revoke consent (an event's, a provider's
    word, a merge; `SqlIdentityGraph._save_traits`, the bulk graph's merges)
    and an unmerge's rebuild stamp `updated_at` in the same row, under the profiles lock the pipeline plans
    messages under, so a revocation is never visible without its stamp, and
    one taken after a message was planned is no earlier than its planning
    (less the skew between two nodes' clocks). What each delivery claim asks
    of the deliveries it takes: the identify that came with the message's
    cause is usually among the changes, so its traits usually come back.
    """
    return {
        profile_id: None if merged_into else traits
        for profile_id, merged_into, traits in _CHANGED_SINCE.execute(connection, profile_ids, b_since=since)
    }


def live_traits(connection: Connection, profile_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The traits of each id's surviving profile, in two statements whatever their number (ids of no profile
    left out): what a claim of deliveries checks consent against."""
    live_of, rows = _live_profile_rows(connection, profile_ids)
    return {profile_id: rows[live_id][3] for profile_id, live_id in live_of.items() if live_id in rows}


def _live_profile_rows(connection: Connection, profile_ids: Collection[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Each id's surviving profile id, and those profiles' rows (id, created_at, updated_at, traits) by id."""
    live_of = live_profile_ids(connection, sorted(set(profile_ids)))
    return live_of, {row[0]: row for row in _PROFILE_ROWS_OF.execute(connection, sorted(set(live_of.values())))}


def profile_view(connection: Connection, profile_id: str) -> dict[str, Any] | None:
    """A profile with its traits and every identifier, grouped by type (newest first); None if there is none."""
    return profile_views(connection, [profile_id]).get(profile_id)


def profile_views(connection: Connection, profile_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """`profile_view` of each id (an alias gets its survivor's view), in four statements whatever their number.

    The timer engine fires a set of timers at once; reading their profiles one
    by one cost four statements a timer, about half of its time. Ids of no
    profile are left out.
    """
    live_of, rows = _live_profile_rows(connection, profile_ids)
    live = sorted(rows)
    views: dict[str, dict[str, Any]] = {
        profile_id: {
            "profile_id": profile_id, "created_at": created_at, "updated_at": updated_at, "traits": traits,
            "identifiers": {}, "merged_profile_ids": [],
        }
        for profile_id, created_at, updated_at, traits in rows.values()
    }
    for profile_id, type_, value in _IDENTIFIERS_OF.execute(connection, live):
        views[profile_id]["identifiers"].setdefault(type_, []).append(value)
    for survivor_id, merged_id in _ALIASES_OF.execute(connection, live):
        views[survivor_id]["merged_profile_ids"].append(merged_id)
    return {profile_id: views[live_id] for profile_id, live_id in live_of.items() if live_id in views}


def find_profile_id(connection: Connection, ident: Identifier) -> str | None:
    return connection.execute(
        select(identifiers.c.profile_id).where(identifiers.c.type == ident.type, identifiers.c.value == ident.value)
    ).scalar_one_or_none()


def counts(connection: Connection) -> dict[str, int]:
    live = connection.execute(select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))).scalar_one()
    merged = connection.execute(select(func.count()).select_from(merges)).scalar_one()
    return {"profiles": live, "merges": merged}
