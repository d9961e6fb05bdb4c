"""Stage 2: which person a touchpoint belongs to.

Every identifier on a touchpoint is evidence that they belong to one person.
None known: a new profile. One profile: the new identifiers join it. Several:
the profiles merge, and the oldest survives so profile ids stay stable
(ULIDs sort by creation time, so "oldest" is simply the smallest id).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from hub.model import Identifier, Resolution, Touchpoint


class IdentityGraph(Protocol):
    """The storage the resolver needs; `hub.store.identity_graph.SqlIdentityGraph` implements it."""

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]: ...

    def create_profile(self, at: datetime) -> str: ...

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None: ...

    def merge(
        self, survivor_id: str, merged_ids: Sequence[str], touchpoint_id: str, linking: Sequence[Identifier], at: datetime
    ) -> None: ...


def resolve(touchpoint: Touchpoint, graph: IdentityGraph, now: datetime) -> Resolution:
    known = graph.profiles_of(touchpoint.identifiers)
    profile_ids = sorted(set(known.values()))
    created = not profile_ids
    survivor = graph.create_profile(now) if created else profile_ids[0]
    merged = tuple(profile_ids[1:])
    if merged:
        linking = [ident for ident in touchpoint.identifiers if ident in known]
        graph.merge(survivor, merged, touchpoint.touchpoint_id, linking, now)
    new_identifiers = [ident for ident in touchpoint.identifiers if ident not in known]
    if new_identifiers:
        graph.attach(survivor, new_identifiers, touchpoint.touchpoint_id, now)
    return Resolution(profile_id=survivor, created=created, merged_profile_ids=merged)
