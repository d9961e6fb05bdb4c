"""The identity graph held in memory in front of the store, for bulk resolution.

`resolve()` asks a handful of questions per touchpoint (who owns these
identifiers, how many of each type does that profile hold); against SQL each
is a statement, and statements, not the work, dominate. `CachedIdentityGraph`
loads the graph once, answers from dictionaries, and writes what changed in
batches: new profiles and identifiers as multi-row inserts, merges as a few
executemany updates per flush.

It is exact only while this process is the graph's only writer (a backfill, a
replay, a single-process hub), because nothing tells it about another
process's writes. Traits are not its business: it resolves identity only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from ulid import ULID

from hub.clock import utcnow
from hub.model import Identifier, MovedIdentifier, RefusedLink
from hub.store.forget_digest import forget_keys, refuse_keyed_rows
from hub.store.identity_graph import FOLLOWING_MERGES, detached_event, moved_event
from hub.store.refusals import refused_events, save_refusals
from hub.store.traits import newest_traits
from hub.store.schema import forgotten_identifiers, identifiers, identity_events, kept_apart, merges, profiles
from hub.store.sql import lock_profiles


class CachedIdentityGraph:
    """`hub.identity.IdentityGraph` over an in-memory copy of the graph; call `flush()` inside a write transaction."""

    def __init__(self, connection: Connection) -> None:
        self.owner: dict[Identifier, str] = {}
        self.members: dict[str, list[Identifier]] = {}
        self.counts: dict[str, Counter[str]] = {}
        self.from_alias: set[Identifier] = set()  # stored as an alias's previousId (`mark_alias_previous_ids`)
        self.first_seen: dict[Identifier, datetime] = {}  # which is oldest, for `evict_oldest`
        stored = select(identifiers.c.type, identifiers.c.value, identifiers.c.profile_id, identifiers.c.from_alias,
                        identifiers.c.first_seen_at)
        for type_, value, profile_id, from_alias, first_seen_at in connection.execute(stored):
            ident = Identifier(type_, value)
            self.owner[ident] = profile_id
            self.first_seen[ident] = first_seen_at
            self.members.setdefault(profile_id, []).append(ident)
            self.counts.setdefault(profile_id, Counter())[type_] += 1
            if from_alias:
                self.from_alias.add(ident)
        self.apart = {frozenset(pair) for pair in connection.execute(select(kept_apart.c.profile_a, kept_apart.c.profile_b))}
        refuse_keyed_rows(connection)  # without the key, a keyed row would refuse nobody
        self.blocked = set(connection.execute(select(forgotten_identifiers.c.digest)).scalars())
        self.forget_keys = forget_keys(connection)
        self._new_profiles: dict[str, dict[str, Any]] = {}
        self._new_identifiers: dict[Identifier, dict[str, Any]] = {}
        self._merge_rows: list[dict[str, Any]] = []
        self._merged_into: dict[str, str] = {}  # every merge since the last flush, merged -> survivor
        self._events: list[dict[str, Any]] = []
        self._refusals: list[dict[str, Any]] = []  # written by `save_refusals`, which counts a recurring one
        self._moved_identifiers: dict[Identifier, dict[str, Any]] = {}  # stored identifiers given to another profile
        self._evicted: list[dict[str, Any]] = []  # stored identifiers to delete (`evict_oldest`)

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        owner = self.owner
        return {ident: owner[ident] for ident in idents if ident in owner}

    def type_counts(self, profile_ids: Collection[str]) -> dict[str, Counter[str]]:
        return {p: self.counts[p] for p in profile_ids if p in self.counts}

    def kept_apart(self, profile_ids: Collection[str]) -> set[frozenset[str]]:
        ids = set(profile_ids)
        return {pair for pair in self.apart if pair & ids}

    def forgotten(self, idents: Sequence[Identifier]) -> set[Identifier]:
        if not self.blocked:
            return set()
        return {ident for ident in idents if not self.blocked.isdisjoint(self.forget_keys.candidates(ident))}

    def alias_previous_ids(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        owner = self.owner
        return {ident: owner[ident] for ident in idents if ident in self.from_alias}

    def mark_alias_previous_ids(self, idents: Sequence[Identifier]) -> None:
        """Only identifiers `attach` just took are marked: their rows are still to be written."""
        for ident in idents:
            self.from_alias.add(ident)
            self._new_identifiers[ident]["from_alias"] = True

    def create_profile(self, at: datetime) -> str:
        profile_id = str(ULID())
        self._new_profiles[profile_id] = {
            "profile_id": profile_id, "created_at": at, "updated_at": at, "merged_into": None, "traits": {}, "trait_times": {},
        }
        self.members[profile_id] = []
        self.counts[profile_id] = Counter()
        return profile_id

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None:
        for ident in idents:
            self.owner[ident] = profile_id
            self.first_seen[ident] = at
            self._new_identifiers[ident] = {
                "type": ident.type, "value": ident.value, "profile_id": profile_id, "origin_profile_id": profile_id,
                "first_seen_at": at, "touchpoint_id": touchpoint_id, "from_alias": False,
            }
        self.members[profile_id].extend(idents)
        self.counts[profile_id].update(ident.type for ident in idents)

    def merge(
        self, survivor_id: str, merged_ids: Sequence[str], touchpoint_id: str, linking: Sequence[Identifier], at: datetime
    ) -> None:
        for merged_id in merged_ids:
            moving = self.members.pop(merged_id, [])
            for ident in moving:
                self.owner[ident] = survivor_id
                # Rows written at the flush go to the survivor as well: the flush repoints only stored profiles'
                # identifiers, so a token moved to a profile made in this flush stayed with it, merged away.
                for pending in (self._new_identifiers.get(ident), self._moved_identifiers.get(ident)):
                    if pending is not None:
                        pending["profile_id"] = survivor_id
            self.members[survivor_id].extend(moving)
            self.counts[survivor_id].update(self.counts.pop(merged_id, Counter()))
            self.apart = {frozenset(survivor_id if p == merged_id else p for p in pair) for pair in self.apart}
            self._merge_rows.append({
                "survivor_id": survivor_id, "merged_id": merged_id, "touchpoint_id": touchpoint_id,
                "linking_identifiers": [[i.type, i.value] for i in linking], "merged_at": at,
            })
            self._merged_into[merged_id] = survivor_id

    def move(self, profile_id: str, moved: Sequence[MovedIdentifier], touchpoint_id: str, at: datetime) -> None:
        for m in moved:
            ident = m.identifier
            self.members[m.from_profile_id].remove(ident)
            self.counts[m.from_profile_id][ident.type] -= 1
            self.owner[ident] = profile_id
            self.first_seen[ident] = at
            self.members[profile_id].append(ident)
            self.counts[profile_id][ident.type] += 1
            row = {"profile_id": profile_id, "origin_profile_id": profile_id, "first_seen_at": at, "touchpoint_id": touchpoint_id}
            pending = self._new_identifiers.get(ident)
            if pending is not None:
                pending.update(row)
            else:
                self._moved_identifiers[ident] = {"m_type": ident.type, "m_value": ident.value, **row}
            self._events.append(moved_event(profile_id, m, touchpoint_id, at))

    def evict_oldest(
        self, profile_id: str, type_: str, count: int, touchpoint_id: str, rule: str, at: datetime
    ) -> Sequence[str]:
        held = sorted((i for i in self.members[profile_id] if i.type == type_), key=lambda i: (self.first_seen[i], i.value))
        for ident in held[:count]:
            self.members[profile_id].remove(ident)
            self.counts[profile_id][type_] -= 1
            del self.owner[ident], self.first_seen[ident]
            self.from_alias.discard(ident)
            self._moved_identifiers.pop(ident, None)
            if self._new_identifiers.pop(ident, None) is None:
                self._evicted.append({"e_type": ident.type, "e_value": ident.value})
            self._events.append(detached_event(profile_id, ident, rule, at, touchpoint_id))
        return [ident.value for ident in held[:count]]

    def record_refusals(self, profile_id: str, touchpoint_id: str, refused: Sequence[RefusedLink], at: datetime) -> None:
        self._refusals.extend(refused_events(profile_id, touchpoint_id, refused, at))

    def flush(self, connection: Connection) -> None:
        """Write everything resolved since the last flush, in a handful of statements.

        Under the profiles lock, as every identity writer: the pipeline's cache
        (`hub.identity_epoch`) relies on no one else's graph-epoch bump landing
        while it holds the lock.
        """
        lock_profiles(connection)
        final = {merged: survivor_of(self._merged_into, merged) for merged in self._merged_into}
        for profile_id, row in self._new_profiles.items():
            row["merged_into"] = final.get(profile_id)
        if self._new_profiles:
            _bulk_insert(connection, profiles, list(self._new_profiles.values()))
        if self._evicted:  # before the inserts: an evicted identifier may have come back since
            connection.execute(
                delete(identifiers).where(identifiers.c.type == bindparam("e_type"), identifiers.c.value == bindparam("e_value")),
                self._evicted,
            )
        if self._new_identifiers:
            _bulk_insert(connection, identifiers, list(self._new_identifiers.values()))
        if self._moved_identifiers:  # before the merges' repointing, which then carries them on to a final survivor
            connection.execute(
                update(identifiers)
                .where(identifiers.c.type == bindparam("m_type"), identifiers.c.value == bindparam("m_value")),
                list(self._moved_identifiers.values()),
            )
        stored_moves = {merged: survivor for merged, survivor in final.items() if merged not in self._new_profiles}
        if stored_moves:
            self._apply_moves(connection, stored_moves)
        if self._merge_rows:
            connection.execute(insert(merges), self._merge_rows)
        if self._events:
            connection.execute(insert(identity_events), self._events)
        save_refusals(connection, self._refusals)
        self._new_profiles, self._new_identifiers, self._merge_rows, self._merged_into, self._events = {}, {}, [], {}, []
        self._refusals = []
        self._moved_identifiers, self._evicted = {}, []

    def _apply_moves(self, connection: Connection, moved: dict[str, str]) -> None:
        """Merges of profiles already stored: identifiers, aliases, traits and what follows a profile in a merge
        (`FOLLOWING_MERGES`: touchpoints, decisions, deliveries, timers, consent changes) go to the final survivor,
        as `SqlIdentityGraph.merge` moves them."""
        involved = set(moved) | set(moved.values())
        traits = {
            row.profile_id: (dict(row.traits), dict(row.trait_times))
            for row in connection.execute(
                select(profiles.c.profile_id, profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id.in_(involved))
            )
        }
        for merged_id, survivor_id in moved.items():
            traits[survivor_id] = newest_traits(traits[survivor_id], traits[merged_id])
        moves = [{"m": merged, "s": survivor} for merged, survivor in moved.items()]
        for column in (identifiers.c.profile_id, profiles.c.merged_into, *FOLLOWING_MERGES):
            connection.execute(update(column.table).where(column == bindparam("m")).values({column.name: bindparam("s")}), moves)
        now = utcnow()  # `updated_at`, as the graph's own writes stamp it: a delivery claim rechecks consent by it
        connection.execute(
            update(profiles).where(profiles.c.profile_id == bindparam("m")).values(merged_into=bindparam("s"), updated_at=now),
            moves,
        )
        connection.execute(
            update(profiles).where(profiles.c.profile_id == bindparam("p"))
            .values(traits=bindparam("t"), trait_times=bindparam("tt"), updated_at=now),
            [{"p": p, "t": traits[p][0], "tt": traits[p][1]} for p in set(moved.values())],
        )


def survivor_of(merged_into: Mapping[str, str], profile_id: str) -> str:
    """Where a profile ended up, following merges (merged -> survivor) until one was not merged."""
    while profile_id in merged_into:
        profile_id = merged_into[profile_id]
    return profile_id


def _bulk_insert(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """A multi-row insert through the driver, with each column's own type conversion.

    SQLAlchemy's per-row parameter handling costs several times the insert
    itself at this volume; converting each value with the column type's bind
    processor keeps the stored form identical to what Core would write, and
    memoizing it helps because a batch shares a handful of timestamps.
    """
    dialect = connection.dialect
    columns = list(rows[0])
    converters = [
        (index, _memoized(processor))
        for index, name in enumerate(columns)
        if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    pick = itemgetter(*columns)
    values = []
    for row in rows:
        picked = list(pick(row))
        for index, convert in converters:
            picked[index] = convert(picked[index])
        values.append(tuple(picked))
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    connection.exec_driver_sql(statement, values)


def _memoized(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    memo: dict[Any, Any] = {}

    def cached(value: Any) -> Any:
        # JSON documents are unhashable; equal reprs serialize alike, and new rows hold tiny ones.
        key = repr(value) if isinstance(value, (dict, list)) else value
        if key not in memo:
            memo[key] = convert(value)
        return memo[key]

    return cached
