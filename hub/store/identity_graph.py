"""The identity graph in SQL: the storage side of `hub.identity.IdentityGraph`."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter, ColumnElement, Connection, and_, bindparam, delete, func, insert, null, or_, select, union_all, update,
)
from ulid import ULID

from hub.clock import utcnow
from hub.model import Identifier, MovedIdentifier, RefusedLink
from hub.store.forget_digest import forget_keys, refuse_keyed_rows_once_moved
from hub.store.refusals import refused_events, save_refusals
from hub.store.schema import (
    consent_changes, decisions, deliveries, forgotten_identifiers, graph_epoch, identifiers, identity_events, kept_apart,
    merges, profiles, timers, touchpoints,
)
from hub.store.precompiled import InLists, Precompiled, rows_where_in
from hub.store.sql import insert_ignoring_conflicts
from hub.store.traits import Traits, newest_traits, stamped_traits

# The graph's statements are `Precompiled`: SQLAlchemy's work per executed statement, even a
# cached one, was most of the SQL graph's time. Its rare audit events stay plain Core.
_SAVE_TRAITS = Precompiled(
    update(profiles)
    .where(profiles.c.profile_id == bindparam("b_profile_id"))
    .values(traits=bindparam("b_traits"), trait_times=bindparam("b_trait_times"), updated_at=bindparam("b_updated_at"))
)
_INSERT_PROFILE = Precompiled(insert(profiles), ["profile_id", "created_at", "updated_at", "traits", "trait_times"])
_INSERT_IDENTIFIERS = Precompiled(
    insert(identifiers), ["type", "value", "profile_id", "origin_profile_id", "first_seen_at", "touchpoint_id"]
)
_INSERT_EVENTS = insert(identity_events)
_MOVE_IDENTIFIER = (
    update(identifiers)
    .where(identifiers.c.type == bindparam("b_type"), identifiers.c.value == bindparam("b_value"))
    .values(profile_id=bindparam("b_to"), origin_profile_id=bindparam("b_to"), first_seen_at=bindparam("b_at"),
            touchpoint_id=bindparam("b_touchpoint"))
)
_MARK_FROM_ALIAS = (
    update(identifiers)
    .where(identifiers.c.type == bindparam("b_type"), identifiers.c.value == bindparam("b_value"))
    .values(from_alias=True)
)
_EPOCH = Precompiled(select(graph_epoch.c.value))
_INSERT_MERGES = Precompiled(insert(merges), ["survivor_id", "merged_id", "touchpoint_id", "linking_identifiers", "merged_at"])

# The variable-length queries are `InLists`: prebuilt once per number of values, since a touchpoint
# carries a handful of identifiers and touches one to three profiles, so a few statements cover
# every call.


def _known(types: list[BindParameter[Any]], values: list[BindParameter[Any]], *only: ColumnElement[bool]) -> Any:
    """Rows (type, value, owner) for the stored identifiers among these pairs that meet `only`."""
    # An OR of (type, value) pairs, not a row-value IN: SQLite searches the primary key for each
    # pair of an OR, but scans the table for `(type, value) IN ((?, ?), ...)`.
    pairs = [and_(identifiers.c.type == type_, identifiers.c.value == value) for type_, value in zip(types, values)]
    return select(identifiers.c.type, identifiers.c.value, identifiers.c.profile_id).where(or_(*pairs), *only)


def _owners_of(types: list[BindParameter[Any]], values: list[BindParameter[Any]], digests: list[BindParameter[Any]]) -> Any:
    """Rows (type, value, owner) for the known identifiers, then (digest, NULL, NULL) for the forgotten ones.

    Both are questions about the touchpoint's identifiers, and the second is
    asked whenever one is new; answering them in one statement saves a round
    trip for every first visit. An owner is never NULL, so the rows tell apart.
    """
    return union_all(
        _known(types, values),
        select(forgotten_identifiers.c.digest, null(), null()).where(forgotten_identifiers.c.digest.in_(digests)),
    )


_OWNERS_OF = InLists(_owners_of)
_ALIAS_PREVIOUS_IDS_OF = InLists(lambda types, values: _known(types, values, identifiers.c.from_alias))
_TYPE_COUNTS_OF = InLists(
    lambda ids: select(identifiers.c.profile_id, identifiers.c.type, func.count())
    .where(identifiers.c.profile_id.in_(ids))
    .group_by(identifiers.c.profile_id, identifiers.c.type)
)
_KEPT_APART_OF = InLists(lambda ids: select(kept_apart).where(or_(kept_apart.c.profile_a.in_(ids), kept_apart.c.profile_b.in_(ids))))
# How a merge moves rows to its survivor: `column` set to `b_to` wherever it holds one of the merged ids.
# What follows merged profiles into their survivor: touchpoints, so a profile's history is one query;
# decisions and deliveries, so the rule caps and the daily cap count what the merged profiles were sent;
# timers, so the survivor's next cart event restarts the wait a merged profile's cart began, not a second
# one beside it; consent changes, so an unmerge finds them among the survivor's (each column leads an index).
FOLLOWING_MERGES = (
    touchpoints.c.profile_id, decisions.c.profile_id, deliveries.c.profile_id, timers.c.profile_id,
    consent_changes.c.profile_id,
)
_REPOINT = {
    column: InLists(lambda ids, column=column: update(column.table).where(column.in_(ids)).values({column.name: bindparam("b_to")}))
    for column in (identifiers.c.profile_id, profiles.c.merged_into, *FOLLOWING_MERGES)
}
_RETIRE = InLists(  # merged profiles become aliases of `b_to`
    lambda ids: update(profiles).where(profiles.c.profile_id.in_(ids)).values(merged_into=bindparam("b_to"), updated_at=bindparam("b_at"))
)


_FORGOTTEN_OF = rows_where_in(forgotten_identifiers.c.digest, forgotten_identifiers.c.digest)
_TRAITS_OF = rows_where_in(profiles.c.profile_id, profiles.c.profile_id, profiles.c.traits, profiles.c.trait_times)


class SqlIdentityGraph:
    """Identity graph operations inside one caller-owned transaction.

    Every question is asked of the database when it is asked, so the answers
    are exact beside other writers: on SQLite the write transaction holds the
    lock from its first read. The only thing remembered is what this graph
    itself read or wrote of a profile's traits, so one graph serves one unit
    of work (a pipeline row, a request) and nothing else may change those
    traits while it is in use.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._known_traits: dict[str, Traits] = {}
        self._blocked: dict[Identifier, bool] = {}  # the last lookup's answer to `forgotten`
        self.forget_keys = forget_keys(connection)

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        """The owner of each known identifier, in one statement that also answers `forgotten` for them."""
        if not idents:
            return {}
        candidates = [self.forget_keys.candidates(ident) for ident in idents]
        digests = [digest for forms in candidates for digest in forms]
        found: dict[Identifier, str] = {}
        blocked: set[str] = set()
        for first, value, profile_id in _OWNERS_OF.execute(self.connection, [i.type for i in idents], [i.value for i in idents], digests):
            if profile_id is None:
                blocked.add(first)
            else:
                found[Identifier(first, value)] = profile_id
        self._blocked = {ident: not blocked.isdisjoint(forms) for ident, forms in zip(idents, candidates)}
        return found

    def alias_previous_ids(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        """Of these identifiers, the profile of each an alias stored as its previousId (`mark_alias_previous_ids`):
        one statement, searching the primary key.

        The blocklist is not read here: forgetting puts a previousId's user_id
        digest on it (`hub.store.forget`), so resolution refuses that userId
        before it asks; a forgotten anonymous id is most often a cookie, which
        must not refuse another person's login of the same value.
        """
        rows = _ALIAS_PREVIOUS_IDS_OF.execute(self.connection, [i.type for i in idents], [i.value for i in idents])
        return {Identifier(type_, value): profile_id for type_, value, profile_id in rows}

    def mark_alias_previous_ids(self, idents: Sequence[Identifier]) -> None:
        """Remember that these identifiers, just attached, are an alias's previousId whose meaning was unknown."""
        self.connection.execute(_MARK_FROM_ALIAS, [{"b_type": i.type, "b_value": i.value} for i in idents])

    def type_counts(self, profile_ids: Collection[str]) -> dict[str, Counter[str]]:
        """How many identifiers of each type every profile holds: what the limits are checked against."""
        found: dict[str, Counter[str]] = defaultdict(Counter)
        rows = _TYPE_COUNTS_OF.execute(self.connection, profile_ids)
        for profile_id, type_, count in rows:
            found[profile_id][type_] = count
        return dict(found)

    def kept_apart(self, profile_ids: Collection[str]) -> set[frozenset[str]]:
        return {frozenset((a, b)) for a, b, _since in _KEPT_APART_OF.execute(self.connection, profile_ids)}

    def forgotten(self, idents: Sequence[Identifier]) -> set[Identifier]:
        """Which identifiers belong to an erased person; those of the last `profiles_of` are not asked again."""
        if all(ident in self._blocked for ident in idents):
            return {ident for ident in idents if self._blocked[ident]}
        by_digest = {digest: ident for ident in idents for digest in self.forget_keys.candidates(ident)}
        return {by_digest[digest] for (digest,) in _FORGOTTEN_OF.execute(self.connection, by_digest)}

    def record_refusals(self, profile_id: str, touchpoint_id: str, refused: Sequence[RefusedLink], at: datetime) -> None:
        save_refusals(self.connection, refused_events(profile_id, touchpoint_id, refused, at))

    def move(self, profile_id: str, moved: Sequence[MovedIdentifier], touchpoint_id: str, at: datetime) -> None:
        """Give each identifier to `profile_id` as if it had come with this touchpoint (its side in an unmerge
        too), and say so in the audit trail of both profiles."""
        self.connection.execute(_MOVE_IDENTIFIER, [
            {"b_type": m.identifier.type, "b_value": m.identifier.value, "b_to": profile_id, "b_at": at, "b_touchpoint": touchpoint_id}
            for m in moved
        ])
        self.connection.execute(_INSERT_EVENTS, [moved_event(profile_id, m, touchpoint_id, at) for m in moved])

    def evict_oldest(
        self, profile_id: str, type_: str, count: int, touchpoint_id: str, rule: str, at: datetime
    ) -> Sequence[str]:
        """Detach the profile's `count` identifiers of `type_` seen first, to make room for new ones
        (`evict_oldest` in identity.yaml), each recorded as detached so `profiles explain` says where it went;
        returns their values."""
        oldest = self.connection.execute(
            select(identifiers.c.value)
            .where(identifiers.c.profile_id == profile_id, identifiers.c.type == type_)
            .order_by(identifiers.c.first_seen_at, identifiers.c.value)
            .limit(count)
        ).scalars().all()
        self._drop(type_, [(profile_id, value) for value in oldest], rule, at, touchpoint_id)
        return oldest

    def create_profile(self, at: datetime) -> str:
        profile_id = str(ULID())
        _INSERT_PROFILE.execute(
            self.connection, {"profile_id": profile_id, "created_at": at, "updated_at": at, "traits": {}, "trait_times": {}}
        )
        self._known_traits[profile_id] = ({}, {})
        return profile_id

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None:
        _INSERT_IDENTIFIERS.execute(
            self.connection,
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
        stored = self._traits_of([survivor_id, *merged_ids])
        survivor_traits = stored[survivor_id]
        for merged_id in merged_ids:
            survivor_traits = newest_traits(survivor_traits, stored[merged_id])
            self._known_traits.pop(merged_id)  # an alias now; its stored traits are no longer read
        _INSERT_MERGES.execute(
            self.connection,
            [
                {
                    "survivor_id": survivor_id, "merged_id": merged_id, "touchpoint_id": touchpoint_id,
                    "linking_identifiers": [[i.type, i.value] for i in linking], "merged_at": at,
                }
                for merged_id in merged_ids
            ],
        )
        _REPOINT[identifiers.c.profile_id].execute(self.connection, merged_ids, b_to=survivor_id)
        _RETIRE.execute(self.connection, merged_ids, b_to=survivor_id, b_at=at)
        # Earlier aliases of the losers now point straight at the survivor: one hop resolves any old id.
        _REPOINT[profiles.c.merged_into].execute(self.connection, merged_ids, b_to=survivor_id)
        for column in FOLLOWING_MERGES:
            _REPOINT[column].execute(self.connection, merged_ids, b_to=survivor_id)
        self._repoint_kept_apart(merged_ids, survivor_id)
        self._save_traits(survivor_id, survivor_traits)

    def _repoint_kept_apart(self, merged_ids: Sequence[str], survivor_id: str) -> None:
        """An unmerge's "never again" follows the profiles it named into whatever they merge with."""
        pairs = _KEPT_APART_OF.execute(self.connection, merged_ids)
        if not pairs:
            return
        involved = kept_apart.c.profile_a.in_(list(merged_ids)) | kept_apart.c.profile_b.in_(list(merged_ids))
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
        self._drop(ident_type, owned, reason, utcnow())
        return len(owned)

    def _drop(
        self, type_: str, owned: Sequence[tuple[str, str]], rule: str, at: datetime, touchpoint_id: str | None = None
    ) -> None:
        """Delete these (profile, value) identifiers of `type_`, each written to the audit trail as detached."""
        if not owned:
            return
        self.connection.execute(
            delete(identifiers).where(identifiers.c.type == type_, identifiers.c.value.in_([value for _, value in owned]))
        )
        self.connection.execute(_INSERT_EVENTS, [
            detached_event(profile_id, Identifier(type_, value), rule, at, touchpoint_id) for profile_id, value in owned
        ])

    def update_traits(self, profile_id: str, traits: dict[str, Any], observed_at: datetime) -> None:
        """Last write wins per trait, judged by the event's time, not by arrival order.

        Nothing is written when no trait changes: a replayed event, or one older
        than every trait it carries.
        """
        if traits:
            self.change_traits(profile_id, lambda current: newest_traits(current, stamped_traits(traits, observed_at)))

    def change_traits(self, profile_id: str, change: Callable[[Traits], Traits]) -> None:
        """The profile's traits (with their times) as `change` makes them, for what last-write-wins cannot say (a
        provider's word taking back its own pin); nothing is written if nothing changes."""
        current = self._traits_of([profile_id])[profile_id]
        changed = change(current)
        if changed != current:
            self._save_traits(profile_id, changed)

    def traits(self, profile_id: str) -> dict[str, Any]:
        """A profile's traits, what rule predicates read on every event: read at most once by this graph."""
        return dict(self._traits_of([profile_id])[profile_id][0])

    def _traits_of(self, profile_ids: Sequence[str]) -> dict[str, Traits]:
        """Traits and their times per profile, each read at most once by this graph."""
        unread = [profile_id for profile_id in profile_ids if profile_id not in self._known_traits]
        if unread:
            for profile_id, values, times in _TRAITS_OF.execute(self.connection, unread):
                self._known_traits[profile_id] = (dict(values), dict(times))
        return {profile_id: self._known_traits[profile_id] for profile_id in profile_ids}

    def _save_traits(self, profile_id: str, traits: Traits) -> None:
        # updated_at is when the hub changed the profile; the event times live in trait_times.
        _SAVE_TRAITS.execute(
            self.connection,
            {"b_profile_id": profile_id, "b_traits": traits[0], "b_trait_times": traits[1], "b_updated_at": utcnow()},
        )
        self._known_traits[profile_id] = traits


def graph_epoch_value(connection: Connection) -> int:
    """The identity graph's epoch: triggers bump it on every write to identifiers, aliases, kept-apart pairs
    or the forgotten list, so an unchanged value means an unchanged graph (`hub.identity_epoch`)."""
    [(value,)] = _EPOCH.execute(connection, {})
    return value


def readable_graph_epoch(connection: Connection) -> int:
    """`graph_epoch_value`, for a transaction that resolves identities: ConfigError on a node without
    HUB_FORGET_KEY once the blocklist holds keyed rows it cannot read (`refuse_keyed_rows_once_moved`).

    The pipeline reads the epoch first and last in every batch, so a batch
    that would take a forgotten person back in (another node keyed the
    blocklist before or during it) rolls back instead, its events left in
    the inbox for a node with the key.
    """
    value = graph_epoch_value(connection)
    refuse_keyed_rows_once_moved(connection, value)
    return value


def detached_event(
    profile_id: str, ident: Identifier, rule: str, at: datetime, touchpoint_id: str | None = None
) -> dict[str, Any]:
    """The audit row of an identifier taken off `profile_id`: a provider called it dead, or a newer one took its
    place (`evict_oldest`, at `touchpoint_id`)."""
    return {
        "kind": "detached", "profile_id": profile_id, "other_profile_id": None, "touchpoint_id": touchpoint_id,
        "identifiers": [[ident.type, ident.value]], "rule": rule, "at": at,
    }


def moved_event(profile_id: str, moved: MovedIdentifier, touchpoint_id: str, at: datetime) -> dict[str, Any]:
    """The audit row of an identifier that moved to `profile_id` (`follows_last_login`): both profiles explain it."""
    return {
        "kind": "moved", "profile_id": profile_id, "other_profile_id": moved.from_profile_id, "touchpoint_id": touchpoint_id,
        "identifiers": [[moved.identifier.type, moved.identifier.value]], "rule": moved.rule, "at": at,
    }
