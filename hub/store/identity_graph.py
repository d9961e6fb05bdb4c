"""The identity graph in SQL: the storage side of `hub.identity.IdentityGraph`."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from ulid import ULID

from hub.clock import utcnow
from hub.model import Identifier, RefusedLink
from hub.store import touchpoints as touchpoint_store
from hub.store.schema import forgotten_identifiers, identifiers, identity_events, kept_apart, merges, profiles
from hub.store.sql import insert_ignoring_conflicts

_TRAITS_OF = select(profiles.c.traits).where(profiles.c.profile_id == bindparam("profile_id"))
_PROFILE_OF = select(identifiers.c.profile_id).where(
    identifiers.c.type == bindparam("type"), identifiers.c.value == bindparam("value")
)


class SqlIdentityGraph:
    """Identity graph operations inside one caller-owned transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        # One primary-key lookup per identifier: a touchpoint carries a handful,
        # and the cached statement is far cheaper than compiling a tuple IN.
        found = {}
        for ident in idents:
            profile_id = self.connection.execute(_PROFILE_OF, {"type": ident.type, "value": ident.value}).scalar()
            if profile_id is not None:
                found[ident] = profile_id
        return found

    def type_counts(self, profile_ids: Collection[str]) -> dict[str, Counter[str]]:
        """How many identifiers of each type every profile holds: what the limits are checked against."""
        found: dict[str, Counter[str]] = defaultdict(Counter)
        rows = self.connection.execute(
            select(identifiers.c.profile_id, identifiers.c.type, func.count())
            .where(identifiers.c.profile_id.in_(list(profile_ids)))
            .group_by(identifiers.c.profile_id, identifiers.c.type)
        )
        for profile_id, type_, count in rows:
            found[profile_id][type_] = count
        return dict(found)

    def kept_apart(self, profile_ids: Collection[str]) -> set[frozenset[str]]:
        ids = list(profile_ids)
        rows = self.connection.execute(
            select(kept_apart.c.profile_a, kept_apart.c.profile_b).where(
                or_(kept_apart.c.profile_a.in_(ids), kept_apart.c.profile_b.in_(ids))
            )
        )
        return {frozenset(row) for row in rows}

    def forgotten(self, idents: Sequence[Identifier]) -> set[Identifier]:
        by_digest = {identifier_digest(ident): ident for ident in idents}
        rows = self.connection.execute(
            select(forgotten_identifiers.c.digest).where(forgotten_identifiers.c.digest.in_(list(by_digest)))
        )
        return {by_digest[digest] for digest in rows.scalars()}

    def record_refusals(self, profile_id: str, touchpoint_id: str, refused: Sequence[RefusedLink], at: datetime) -> None:
        self.connection.execute(
            insert(identity_events),
            [
                {
                    "kind": "refused", "profile_id": profile_id, "other_profile_id": link.profile_id,
                    "touchpoint_id": touchpoint_id, "identifiers": [[link.identifier.type, link.identifier.value]],
                    "rule": link.rule, "at": at,
                }
                for link in refused
            ],
        )

    def create_profile(self, at: datetime) -> str:
        profile_id = str(ULID())
        self.connection.execute(
            insert(profiles).values(profile_id=profile_id, created_at=at, updated_at=at, traits={}, trait_times={})
        )
        return profile_id

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None:
        self.connection.execute(
            insert(identifiers),
            [
                {
                    "type": i.type, "value": i.value, "profile_id": profile_id, "origin_profile_id": profile_id,
                    "first_seen_at": at, "touchpoint_id": touchpoint_id,
                }
                for i in idents
            ],
        )

    def merge(
        self, survivor_id: str, merged_ids: Sequence[str], touchpoint_id: str, linking: Sequence[Identifier], at: datetime
    ) -> None:
        """Fold `merged_ids` into the survivor: identifiers, touchpoints and traits move; the losers become aliases."""
        survivor_traits = self._traits(survivor_id)
        for merged_id in merged_ids:
            merged_traits = self._traits(merged_id)
            survivor_traits = newest_traits(survivor_traits, merged_traits)
            self.connection.execute(
                insert(merges).values(
                    survivor_id=survivor_id,
                    merged_id=merged_id,
                    touchpoint_id=touchpoint_id,
                    linking_identifiers=[[i.type, i.value] for i in linking],
                    merged_at=at,
                )
            )
        self.connection.execute(
            update(identifiers).where(identifiers.c.profile_id.in_(list(merged_ids))).values(profile_id=survivor_id)
        )
        self.connection.execute(
            update(profiles).where(profiles.c.profile_id.in_(list(merged_ids))).values(merged_into=survivor_id, updated_at=at)
        )
        # Earlier aliases of the losers now point straight at the survivor: one hop resolves any old id.
        self.connection.execute(
            update(profiles).where(profiles.c.merged_into.in_(list(merged_ids))).values(merged_into=survivor_id)
        )
        touchpoint_store.move_to_profile(self.connection, merged_ids, survivor_id)
        self._repoint_kept_apart(merged_ids, survivor_id)
        self._save_traits(survivor_id, survivor_traits)

    def _repoint_kept_apart(self, merged_ids: Sequence[str], survivor_id: str) -> None:
        """An unmerge's "never again" follows the profiles it named into whatever they merge with."""
        involved = kept_apart.c.profile_a.in_(list(merged_ids)) | kept_apart.c.profile_b.in_(list(merged_ids))
        pairs = self.connection.execute(select(kept_apart).where(involved)).all()
        if not pairs:
            return
        self.connection.execute(delete(kept_apart).where(involved))
        rows = []
        for a, b, since in pairs:
            a, b = sorted(survivor_id if p in merged_ids else p for p in (a, b))
            if a != b:
                rows.append({"profile_a": a, "profile_b": b, "since": since})
        insert_ignoring_conflicts(self.connection, kept_apart, rows, ["profile_a", "profile_b"])

    def detach(self, ident_type: str, values: Sequence[str], reason: str) -> int:
        """Drop identifiers a provider reported dead (an uninstalled app's push token); returns how many went.

        Each removal is written to the identity audit trail, so `profiles explain`
        can say why a device vanished. A value that comes back later in an
        event is attached afresh, as for any new identifier.
        """
        if not values:
            return 0
        owned = self.connection.execute(
            select(identifiers.c.profile_id, identifiers.c.value).where(
                identifiers.c.type == ident_type, identifiers.c.value.in_(list(values))
            )
        ).all()
        if not owned:
            return 0
        self.connection.execute(
            delete(identifiers).where(identifiers.c.type == ident_type, identifiers.c.value.in_(list(values)))
        )
        at = utcnow()
        self.connection.execute(
            insert(identity_events),
            [
                {"kind": "detached", "profile_id": profile_id, "identifiers": [[ident_type, value]], "rule": reason, "at": at}
                for profile_id, value in owned
            ],
        )
        return len(owned)

    def update_traits(self, profile_id: str, traits: dict[str, Any], observed_at: datetime) -> None:
        """Last write wins per trait, judged by the event's time, not by arrival order."""
        if not traits:
            return
        current = self._traits(profile_id)
        self._save_traits(profile_id, newest_traits(current, stamped_traits(traits, observed_at)))

    def _traits(self, profile_id: str) -> tuple[dict[str, Any], dict[str, str]]:
        row = self.connection.execute(
            select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == profile_id)
        ).one()
        return dict(row.traits), dict(row.trait_times)

    def _save_traits(self, profile_id: str, traits: tuple[dict[str, Any], dict[str, str]]) -> None:
        # updated_at is when the hub changed the profile; the event times live in trait_times.
        self.connection.execute(
            update(profiles)
            .where(profiles.c.profile_id == profile_id)
            .values(traits=traits[0], trait_times=traits[1], updated_at=utcnow())
        )


def identifier_digest(ident: Identifier) -> str:
    """What the forgotten-identifier blocklist keeps instead of the value."""
    return hashlib.sha256(f"{ident.type}\x1f{ident.value}".encode()).hexdigest()


def stamped_traits(traits: dict[str, Any], observed_at: datetime) -> tuple[dict[str, Any], dict[str, str]]:
    """Traits paired with the event time that set each, the shape last-write-wins compares."""
    stamp = observed_at.isoformat()
    return dict(traits), {key: stamp for key in traits}


def newest_traits(
    first: tuple[dict[str, Any], dict[str, str]], second: tuple[dict[str, Any], dict[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    values, times = dict(first[0]), dict(first[1])
    for key, value in second[0].items():
        if key not in times or second[1][key] >= times[key]:
            values[key], times[key] = value, second[1][key]
    return values, times


def live_profile_id(connection: Connection, profile_id: str) -> str | None:
    """The surviving profile for an id, which may be an alias left by a merge."""
    row = connection.execute(select(profiles.c.profile_id, profiles.c.merged_into).where(profiles.c.profile_id == profile_id)).first()
    if row is None:
        return None
    return row.merged_into or row.profile_id


def traits_of(connection: Connection, profile_id: str) -> dict[str, Any]:
    """Only a profile's traits: what rule predicates read on every event (cheaper than `profile_view`)."""
    return connection.execute(_TRAITS_OF, {"profile_id": profile_id}).scalar_one()


def profile_view(connection: Connection, profile_id: str) -> dict[str, Any] | None:
    """A profile with its traits and every identifier, grouped by type (newest first)."""
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        return None
    profile = connection.execute(select(profiles).where(profiles.c.profile_id == live_id)).mappings().one()
    grouped: dict[str, list[str]] = defaultdict(list)
    rows = connection.execute(
        select(identifiers.c.type, identifiers.c.value)
        .where(identifiers.c.profile_id == live_id)
        .order_by(identifiers.c.first_seen_at.desc())
    )
    for type_, value in rows:
        grouped[type_].append(value)
    merged_from = connection.execute(select(profiles.c.profile_id).where(profiles.c.merged_into == live_id)).scalars().all()
    return {
        "profile_id": live_id,
        "created_at": profile["created_at"],
        "updated_at": profile["updated_at"],
        "traits": profile["traits"],
        "identifiers": dict(grouped),
        "merged_profile_ids": sorted(merged_from),
    }


def find_profile_id(connection: Connection, ident: Identifier) -> str | None:
    return connection.execute(
        select(identifiers.c.profile_id).where(identifiers.c.type == ident.type, identifiers.c.value == ident.value)
    ).scalar_one_or_none()


def counts(connection: Connection) -> dict[str, int]:
    live = connection.execute(select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))).scalar_one()
    merged = connection.execute(select(func.count()).select_from(merges)).scalar_one()
    return {"profiles": live, "merges": merged}
