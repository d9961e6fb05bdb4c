"""Why a profile is one person: its identity graph, each link with the touchpoint that made it.

Every identifier row remembers the touchpoint that brought it in, every merge
the touchpoint and identifiers that linked two profiles, and every refused or
undone link is in `identity_events`; this module reads them back as a graph
an ops person can follow ("this email joined because touchpoint X carried it
together with the app's anonymous id"). An anonymous id marked `from_alias`
is an alias's previousId, and a user_id of its value joined because of it.
A merge undone by an unmerge stays in `merges`: only the one that made each
merged-in id an alias explains the profile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, or_, select

from hub.identity import ALIAS_KIND
from hub.store import consent_changes
from hub.store.profile_views import live_profile_id
from hub.store.schema import identifiers, identity_events, merges, profiles, touchpoints

LINK_MERGE_RULE = "shared identifiers within every limit"
# `hub.identity`: an alias links regardless of limits, so a profile may hold two user_ids by one.
ALIAS_MERGE_RULE = "alias call: the sender said its previousId and userId are one person (limits do not apply)"


def explain(connection: Connection, profile_id: str) -> dict[str, Any] | None:
    """The graph of a live profile (or of the profile an alias now points to); None if unknown."""
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        return None
    aliases = sorted(connection.execute(select(profiles.c.profile_id).where(profiles.c.merged_into == live_id)).scalars())
    members = [
        dict(row)
        for row in connection.execute(
            select(identifiers.c.type, identifiers.c.value, identifiers.c.first_seen_at, identifiers.c.touchpoint_id,
                   identifiers.c.origin_profile_id, identifiers.c.from_alias)
            .where(identifiers.c.profile_id == live_id)
            .order_by(identifiers.c.first_seen_at, identifiers.c.type, identifiers.c.value)
        ).mappings()
    ]
    previous_ids = {member["value"]: member for member in members if member.pop("from_alias")}
    merge_rows = _standing_merges(connection, aliases)
    events = _touchpoint_summaries(
        connection, {member["touchpoint_id"] for member in members} | {row["touchpoint_id"] for row in merge_rows}
    )
    # Events recorded against a merged-in id are this profile's too: a link refused to Mom's iPad profile
    # still explains the profile her iPad profile merged into.
    ids = [live_id, *aliases]
    audit = connection.execute(
        select(identity_events)
        .where(or_(identity_events.c.profile_id.in_(ids), identity_events.c.other_profile_id.in_(ids)))
        .order_by(identity_events.c.id)
    ).mappings().all()
    return {
        "profile_id": live_id,
        "aliases": aliases,
        "identifiers": [
            {**member, "why": _why(member, events, previous_ids)} for member in members
        ],
        "links": _links(members, events) + _alias_links(members, previous_ids) + _merge_links(merge_rows),
        "merges": [
            {
                "merge_id": row["id"],
                "survivor_id": row["survivor_id"],
                "merged_profile_id": row["merged_id"],
                "touchpoint_id": row["touchpoint_id"],
                "linking_identifiers": row["linking_identifiers"],
                "merged_at": row["merged_at"],
                "rule": _merge_rule(row["touchpoint_id"], events),
            }
            for row in merge_rows
        ],
        "refused": _seen_from(ids, audit, "refused"),
        "unmerges": _seen_from(ids, audit, "unmerge"),
        "detached": _seen_from(ids, audit, "detached"),
        "moved": [_audit_entry(row) for row in audit if row["kind"] == "moved"],
        "consent_changes": consent_changes.history(connection, live_id),
    }


def _standing_merges(connection: Connection, aliases: list[str]) -> Sequence[Any]:
    """Each alias's latest merge, the one that made it an alias: an unmerge leaves the undone merge's row, so B
    merged into Ana, split off and merged into Cara has two rows, and the first put Ana's email in Cara's graph."""
    latest = select(func.max(merges.c.id)).where(merges.c.merged_id.in_(aliases)).group_by(merges.c.merged_id)
    return connection.execute(select(merges).where(merges.c.id.in_(latest)).order_by(merges.c.id)).mappings().all()


def _merge_rule(touchpoint_id: str, events: dict[str, dict[str, Any]]) -> str:
    """Why a merge was allowed: an alias call names two ids one person, and no limit is checked against it."""
    event = events.get(touchpoint_id)
    return ALIAS_MERGE_RULE if event is not None and event["kind"] == ALIAS_KIND else LINK_MERGE_RULE


def _touchpoint_summaries(connection: Connection, touchpoint_ids: set[str]) -> dict[str, dict[str, Any]]:
    rows = connection.execute(
        select(touchpoints.c.touchpoint_id, touchpoints.c.kind, touchpoints.c.event, touchpoints.c.source_id,
               touchpoints.c.occurred_at, touchpoints.c.identifiers)
        .where(touchpoints.c.touchpoint_id.in_(list(touchpoint_ids)))
    ).mappings()
    return {row["touchpoint_id"]: dict(row) for row in rows}


def _why(member: dict[str, Any], events: dict[str, dict[str, Any]], previous_ids: dict[str, dict[str, Any]]) -> str:
    """Where the identifier was first seen, and the alias it came by (`hub.identity`: a previousId not known
    yet is kept as an anonymous id, and a user_id of its value seen later joins its profile)."""
    seen = f"first seen on {_touchpoint(member['touchpoint_id'], events)}"
    if previous_ids.get(member["value"]) is member:
        return f"{seen}: an alias's previousId not known yet, kept as an {member['type']}; a user_id of this value joins here"
    previous_id = _joined_by(member, previous_ids)
    return seen if previous_id is None else f"joined as the previousId of alias {_touchpoint(previous_id['touchpoint_id'], events)}; {seen}"


def _joined_by(member: dict[str, Any], previous_ids: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The alias's previousId (another member, of the same value) that `member` joined the profile by, if any."""
    previous_id = previous_ids.get(member["value"])
    return None if previous_id is member else previous_id


def _touchpoint(touchpoint_id: str, events: dict[str, dict[str, Any]]) -> str:
    event = events.get(touchpoint_id)
    where = f"touchpoint {touchpoint_id}"
    if event is not None:
        where += f" ({event['event']} from {event['source_id']} at {event['occurred_at'].isoformat()})"
    return where


def _links(members: list[dict[str, Any]], events: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One edge per identifier a touchpoint brought in, to an identifier the profile already had on it."""
    keyed = {(m["type"], m["value"]): m for m in members}
    brought: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for member in members:
        brought[member["touchpoint_id"]].append((member["type"], member["value"]))
    links = []
    for touchpoint_id, new in brought.items():
        event = events.get(touchpoint_id)
        carried = [tuple(pair) for pair in event["identifiers"]] if event else new
        on_profile = [pair for pair in carried if pair in keyed]
        earlier = [pair for pair in on_profile if pair not in new]
        anchor = earlier[0] if earlier else new[0]
        for pair in new:
            if pair != anchor:
                links.append({
                    "from": list(anchor), "to": list(pair), "touchpoint_id": touchpoint_id,
                    "why": "carried together by one touchpoint",
                })
    return links


def _alias_links(members: list[dict[str, Any]], previous_ids: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """An edge from each alias's previousId to the user_id of its value that joined by it."""
    links = []
    for member in members:
        previous_id = _joined_by(member, previous_ids)
        if previous_id is not None:
            links.append({
                "from": [previous_id["type"], member["value"]], "to": [member["type"], member["value"]],
                "touchpoint_id": member["touchpoint_id"], "why": f"the previousId of alias touchpoint {previous_id['touchpoint_id']}",
            })
    return links


def _merge_links(merge_rows: list[Any]) -> list[dict[str, Any]]:
    links = []
    for row in merge_rows:
        linking = row["linking_identifiers"]
        for other in linking[1:]:
            links.append({
                "from": linking[0], "to": other, "touchpoint_id": row["touchpoint_id"],
                "why": f"merged profile {row['merged_id']} into {row['survivor_id']}",
            })
    return links


def _seen_from(viewed: list[str], audit: Sequence[Any], kind: str) -> list[dict[str, Any]]:
    """The audit entries of `kind` with `profile_id` the viewed side and `other_profile_id` the other one.

    A refused link, an unmerge or a detachment is recorded once, from one side (the profile the touchpoint went
    to, the survivor, the profile it was taken from), yet both sides explain it: seen from the other side as
    recorded, `other_profile_id` was the viewed profile itself and the console linked the profile to itself.
    `viewed` is the profile and the ids merged into it; an entry between two of them stays as recorded. Moves
    are not turned: their two ids are a direction, shown as from and to.
    """
    entries = [_audit_entry(row) for row in audit if row["kind"] == kind]
    return [
        {**entry, "profile_id": entry["other_profile_id"], "other_profile_id": entry["profile_id"]}
        if entry["other_profile_id"] in viewed and entry["profile_id"] not in viewed else entry
        for entry in entries
    ]


def _audit_entry(row: Any) -> dict[str, Any]:
    """One audit row; `at` and `touchpoint_id` are its first time, and a refused link that recurs (a shared
    device, refused on every event of its second user) says how often (`times`) and when last (`last_at`)."""
    return {
        "profile_id": row["profile_id"],
        "other_profile_id": row["other_profile_id"],
        "touchpoint_id": row["touchpoint_id"],
        "identifiers": row["identifiers"],
        "rule": row["rule"],
        "at": row["at"],
        "times": row["times"],
        "last_at": row["last_at"] or row["at"],
    }
