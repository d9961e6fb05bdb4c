"""Who owns an identifier, and a profile's traits, remembered across a pipeline's write transactions and
exact beside other writers.

Most touchpoints are returning visitors whose identifiers all belong to one
profile, and asking SQL who owns them was a third of such a touchpoint's
cost; reading the profile's traits, which every event's rules see, was
another statement. `IdentityCache` remembers identifier -> owner between
transactions (with the merges this process made, to follow aliases), and
the traits the pipeline read or wrote; `EpochCachedGraph` answers
`profiles_of` from it when every identifier is in it, and asks SQL
otherwise, and reads a profile's traits from SQL only the first time.
Unlike `hub.identity_cache.CachedIdentityGraph`, which holds the whole graph
for a single writer, it never answers from what another process may have
changed:

- triggers bump `graph_epoch` on every write to identity state and to
  traits (migrations i7_graph_epoch, i9_trait_epoch), so no writer path can
  forget to;
- every identity writer holds the profiles lock (`lock_profiles`) until it
  commits. A transaction takes it, reads the epoch and empties the cache if
  the epoch moved since its last commit; until it commits nobody else
  changes identity, so the epoch read just before committing counts only
  its own writes, all of which went through the cache;
- a rollback, of the transaction or of a savepoint, can take back profiles
  and links the cache has learned: the cache is emptied the moment it
  happens, before anything runs again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, event

from hub.identity_cache import survivor_of
from hub.model import Identifier, MovedIdentifier
from hub.store.identity_graph import SqlIdentityGraph, readable_graph_epoch
from hub.store.traits import Traits
from hub.store.sql import lock_profiles

DEFAULT_CACHE_SIZE = 1_000_000  # identifiers, aliases and profiles' traits held before the cache starts over


class IdentityCache:
    """Identifier owners and profiles' traits valid for one graph epoch; one per pipeline, used by one thread
    at a time."""

    def __init__(self, limit: int = DEFAULT_CACHE_SIZE) -> None:
        self.limit = limit
        self.owner: dict[Identifier, str] = {}
        self.merged_into: dict[str, str] = {}  # merges this process made since the cache last started over
        self.traits: dict[str, Traits] = {}  # filled and kept current by the `EpochCachedGraph`s that share it
        self.epoch: int | None = None  # the graph epoch the cache is exact for; None: not yet known

    def clear(self, *_event_args: Any) -> None:
        """Forget everything (the arguments are a rollback event's, ignored)."""
        self.owner, self.merged_into, self.traits, self.epoch = {}, {}, {}, None

    @contextmanager
    def cleared_on_error(self) -> Iterator[None]:
        """Around a write transaction (its commit included): if anything raises, the cache may hold what
        was never committed."""
        try:
            yield
        except BaseException:
            self.clear()
            raise

    @contextmanager
    def locked(self, connection: Connection) -> Iterator[None]:
        """Take the profiles lock and use the cache in this write transaction; commit soon after.

        On leaving, the epoch is read again and kept as the cache's: under the
        lock, every bump since the first read is this transaction's own. Run
        inside `cleared_on_error`, which empties the cache if the body or the
        commit fails. On a node without HUB_FORGET_KEY, either read is a
        ConfigError once the blocklist holds keyed rows (`readable_graph_epoch`):
        the batch rolls back, its events left in the inbox.
        """
        lock_profiles(connection)
        if readable_graph_epoch(connection) != self.epoch or len(self.traits) > self.limit:
            self.clear()
        for rollback in ("rollback", "rollback_savepoint"):
            event.listen(connection, rollback, self.clear)
        yield
        self.epoch = readable_graph_epoch(connection)

    def owners(self, idents: Sequence[Identifier]) -> dict[Identifier, str] | None:
        """The live owner of each identifier, or None unless every one is cached."""
        owner = self.owner
        try:
            found = {ident: owner[ident] for ident in idents}
        except KeyError:
            return None
        merged = self.merged_into
        return {ident: survivor_of(merged, profile_id) for ident, profile_id in found.items()} if merged else found

    def learn(self, owners: Mapping[Identifier, str]) -> None:
        """Remember owners, starting over when they would not fit (`limit` 0: remember nothing)."""
        if len(self.owner) + len(self.merged_into) + len(owners) > self.limit:
            self.owner, self.merged_into = {}, {}  # still exact for its epoch: empty (traits are held to the limit apart)
        if len(owners) <= self.limit:
            self.owner.update(owners)

    def merged(self, survivor_id: str, merged_ids: Sequence[str]) -> None:
        """The merged profiles' identifiers now belong to the survivor, cached or not."""
        self.merged_into.update(dict.fromkeys(merged_ids, survivor_id))


class EpochCachedGraph(SqlIdentityGraph):
    """`SqlIdentityGraph` for one pipeline row, whose `profiles_of` asks the cache first and whose known
    traits are the cache's.

    Writes go to SQL at once, as before (the rest of the row reads the rows
    they make), and into the cache.
    """

    def __init__(self, connection: Connection, cache: IdentityCache) -> None:
        super().__init__(connection)
        self.cache = cache
        self._known_traits = cache.traits  # what `SqlIdentityGraph` remembers of one unit of work, kept for the next

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]:
        """From the cache when every identifier is there; else all from SQL, which also answers `forgotten`."""
        found = self.cache.owners(idents)
        if found is None:
            found = super().profiles_of(idents)
            self.cache.learn(found)
        return found

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None:
        super().attach(profile_id, idents, touchpoint_id, at)
        self.cache.learn(dict.fromkeys(idents, profile_id))

    def merge(
        self, survivor_id: str, merged_ids: Sequence[str], touchpoint_id: str, linking: Sequence[Identifier], at: datetime
    ) -> None:
        super().merge(survivor_id, merged_ids, touchpoint_id, linking, at)
        self.cache.merged(survivor_id, merged_ids)

    def move(self, profile_id: str, moved: Sequence[MovedIdentifier], touchpoint_id: str, at: datetime) -> None:
        super().move(profile_id, moved, touchpoint_id, at)
        self.cache.learn({m.identifier: profile_id for m in moved})

    def evict_oldest(
        self, profile_id: str, type_: str, count: int, touchpoint_id: str, rule: str, at: datetime
    ) -> Sequence[str]:
        evicted = super().evict_oldest(profile_id, type_, count, touchpoint_id, rule, at)
        for value in evicted:  # the cache would still name the profile as their owner
            self.cache.owner.pop(Identifier(type_, value), None)
        return evicted
