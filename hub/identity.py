"""Stage 2: which person a touchpoint belongs to.

Every identifier on a touchpoint is evidence that they belong to one person.
None known: a new profile. One profile: the new identifiers join it. Several:
the profiles merge, and the oldest survives so profile ids stay stable
(ULIDs sort by creation time, so "oldest" is simply the smallest id).

Evidence is weighed in the priority order of `mappings/identity.yaml`, the
Segment Unify model: the highest-priority identifier anchors the touchpoint,
and each further identifier joins only if the per-type limits still hold
afterwards (two `user_id`s never share a profile because they both used the
family iPad). A refused link is returned, and recorded by the graph, so it can
be explained. A type marked `evict_oldest` (push tokens) is the exception for
a new identifier: one over the limit takes the place of the profile's oldest
of its type, which the graph detaches and records, since the newest token is
the device the person holds; links between profiles keep to the limit. Such a
new identifier is weighed after the known ones, so that it joins its person's
profile rather than anchor a new one. An explicit `alias` call is the sender
saying "my `previousId` and `userId` are one person", so those two link
regardless of limits, as Segment's alias does; any other identifier it
carries keeps to them (analytics.js puts the device's current `anonymousId`,
a shared tablet's too, on every call). Its `previousId` may be an earlier
`userId` or an `anonymousId`. One not seen yet is stored as an `anonymousId`
marked as the alias's, and a `userId` seen for the first time is looked up
among those too (one indexed lookup, for new userIds only): an alias that
came before the earlier login's own events links it all the same, past the
`user_id` limit as any alias does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from hub.errors import ForgottenIdentityError
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.model import Identifier, MovedIdentifier, RefusedLink, Resolution, Touchpoint
from hub.store.forget_digest import ForgetKeys, identifier_digest

# Mappings give Segment's alias `previousId` this type; resolution decides what it really is.
PREVIOUS_ID = "previous_id"
PREVIOUS_ID_MEANS = ("user_id", "anonymous_id")  # an earlier userId if known as one, else an anonymousId
USER_ID, ANONYMOUS_ID = PREVIOUS_ID_MEANS
ALIAS_KIND = "alias"
NO_IDENTIFIERS: frozenset[Identifier] = frozenset()
FORGOTTEN_RULE = "forgotten: the identifier belonged to a profile erased on request"
MOVED_RULE = "moved: a device's identifier follows the last person signed in on it"
KEPT_APART_RULE = "kept apart: an unmerge separated these profiles"
EVICTED_RULE = "evicted: the oldest {type} made room for a new one (limit: at most {limit} per profile)"


class IdentityGraph(Protocol):
    """The storage the resolver needs; `hub.store.identity_graph.SqlIdentityGraph` implements it."""

    forget_keys: ForgetKeys  # how the blocklist of forgotten identifiers is digested (`hub.store.forget_digest`)

    def profiles_of(self, idents: Sequence[Identifier]) -> dict[Identifier, str]: ...

    def type_counts(self, profile_ids: Collection[str]) -> dict[str, Counter[str]]: ...

    def kept_apart(self, profile_ids: Collection[str]) -> set[frozenset[str]]: ...

    def forgotten(self, idents: Sequence[Identifier]) -> set[Identifier]: ...

    def alias_previous_ids(self, idents: Sequence[Identifier]) -> dict[Identifier, str]: ...

    def mark_alias_previous_ids(self, idents: Sequence[Identifier]) -> None: ...

    def create_profile(self, at: datetime) -> str: ...

    def attach(self, profile_id: str, idents: Sequence[Identifier], touchpoint_id: str, at: datetime) -> None: ...

    def merge(
        self, survivor_id: str, merged_ids: Sequence[str], touchpoint_id: str, linking: Sequence[Identifier], at: datetime
    ) -> None: ...

    def record_refusals(self, profile_id: str, touchpoint_id: str, refused: Sequence[RefusedLink], at: datetime) -> None: ...

    def move(self, profile_id: str, moved: Sequence[MovedIdentifier], touchpoint_id: str, at: datetime) -> None: ...

    def evict_oldest(
        self, profile_id: str, type_: str, count: int, touchpoint_id: str, rule: str, at: datetime
    ) -> Sequence[str]: ...


def resolve(
    touchpoint: Touchpoint, graph: IdentityGraph, now: datetime, config: IdentityConfig = DEFAULT_IDENTITY
) -> Resolution:
    idents, known, previous = _lookup(touchpoint.identifiers, graph)
    owners = set(known.values())
    if len(known) == len(idents) and len(owners) == 1:
        return Resolution(profile_id=owners.pop())  # the common case: a returning, fully known visitor
    unknown = [ident for ident in idents if ident not in known]
    blocked = graph.forgotten(unknown) if unknown else set()
    aliased = _named_by_alias(unknown, blocked, graph)
    if aliased:
        known = {**known, **aliased}
        owners.update(aliased.values())
        unknown = [ident for ident in unknown if ident not in aliased]
    refused = [RefusedLink(_by_digest(ident, graph.forget_keys), None, FORGOTTEN_RULE) for ident in idents if ident in blocked]
    rank = config.rank
    evicts = config.evicts_oldest
    # A new identifier that may evict comes last: first in, into an empty cluster, it anchored a new profile
    # and the person's own known identifiers were then refused as over its limit.
    ordered = sorted((ident for ident in idents if ident not in blocked),
                     key=lambda ident: (ident not in known and evicts(ident.type), rank(ident.type)))
    if not ordered:
        raise ForgottenIdentityError(f"touchpoint {touchpoint.touchpoint_id}: every identifier belongs to a forgotten person")
    needs_counts = len(owners) > 1 or (owners and len(unknown) > len(blocked))
    counts = graph.type_counts(owners) if needs_counts else {}
    apart = graph.kept_apart(owners) if len(owners) > 1 else set()
    vouched = _vouched_by_alias(touchpoint.kind, idents, previous)

    cluster: list[str] = []
    total: dict[str, int] = {}  # identifiers per type of everything accepted so far
    new: list[Identifier] = []
    moving: list[MovedIdentifier] = []
    evicting: dict[str, int] = {}  # per type, stored identifiers to drop for new ones over the limit
    for ident in ordered:
        owner = known.get(ident)
        enforce_limits = ident not in vouched
        if owner is None:
            if not enforce_limits or _has_room(ident.type, total, config):
                total[ident.type] = total.get(ident.type, 0) + 1
                new.append(ident)
            elif _can_evict(ident.type, cluster, counts, evicting, config):
                evicting[ident.type] = evicting.get(ident.type, 0) + 1
                new.append(ident)
            else:
                refused.append(RefusedLink(ident, None, _limit_rule(ident.type, config.limit(ident.type))))
            continue
        if owner not in cluster:
            extra = counts.get(owner, {})
            # The anchor (nothing accepted before it) always joins, even if a since-lowered
            # limit makes its profile over-full.
            rule = None if not total else _rule_against(owner, cluster, apart, total, extra, config, enforce_limits)
            if rule is not None:
                if _moves_instead(ident.type, rule, total, config) and ident not in aliased:
                    total[ident.type] = total.get(ident.type, 0) + 1
                    moving.append(MovedIdentifier(ident, owner, MOVED_RULE))
                else:  # an aliased userId has no row to move: it stays out
                    refused.append(RefusedLink(ident, owner, rule))
                continue
            cluster.append(owner)
            for type_, count in extra.items():
                total[type_] = total.get(type_, 0) + count
        if ident in aliased:  # stored from here on, whatever the limits: the alias said so
            total[ident.type] = total.get(ident.type, 0) + 1
            new.append(ident)

    created = not cluster
    survivor = graph.create_profile(now) if created else min(cluster)
    merged = tuple(sorted(profile for profile in cluster if profile != survivor))
    if merged:
        linking = [ident for ident in ordered if known.get(ident) in cluster]
        graph.merge(survivor, merged, touchpoint.touchpoint_id, linking, now)
    for type_, count in evicting.items():  # before the attach: only stored identifiers are the oldest
        rule = EVICTED_RULE.format(type=type_, limit=config.limit(type_))
        graph.evict_oldest(survivor, type_, count, touchpoint.touchpoint_id, rule, now)
    if new:
        graph.attach(survivor, new, touchpoint.touchpoint_id, now)
        previous_ids = _stored_previous_ids(touchpoint.identifiers, new)
        if previous_ids:
            graph.mark_alias_previous_ids(previous_ids)
    if moving:
        graph.move(survivor, moving, touchpoint.touchpoint_id, now)
    if refused:
        graph.record_refusals(survivor, touchpoint.touchpoint_id, refused, now)
    return Resolution(profile_id=survivor, created=created, merged_profile_ids=merged, refused=tuple(refused),
                      erased=as_carried(touchpoint.identifiers, blocked), moved=tuple(moving))


def _lookup(
    carried: Sequence[Identifier], graph: IdentityGraph
) -> tuple[Sequence[Identifier], dict[Identifier, str], frozenset[Identifier]]:
    """The touchpoint's identifiers with each `previous_id` typed, the profile of each known one, and the
    `previous_id`s as typed, which an alias vouches for (`_vouched_by_alias`)."""
    if all(ident.type != PREVIOUS_ID for ident in carried):
        return carried, graph.profiles_of(carried), NO_IDENTIFIERS
    queries = [ident for ident in carried if ident.type != PREVIOUS_ID]
    queries += [meaning for ident in carried if ident.type == PREVIOUS_ID for meaning in meanings_of(ident)]
    found = graph.profiles_of(queries)
    typed = {ident: _meaning(ident.value, found, graph) for ident in carried if ident.type == PREVIOUS_ID}
    idents = list(dict.fromkeys(typed.get(ident, ident) for ident in carried))
    return idents, {ident: found[ident] for ident in idents if ident in found}, frozenset(typed.values())


def _vouched_by_alias(
    kind: str, idents: Sequence[Identifier], previous: frozenset[Identifier]
) -> frozenset[Identifier]:
    """The identifiers an alias links past the limits: its previousId and userId, which the sender says are one
    person. Not the rest it carries: lifting the limits for its anonymousId, a family tablet's, merged a new
    user into the signed-in one's profile, two user_ids and one inbox."""
    if kind != ALIAS_KIND:
        return NO_IDENTIFIERS
    return previous.union(ident for ident in idents if ident.type == USER_ID)


def _meaning(previous_id: str, found: Mapping[Identifier, str], graph: IdentityGraph) -> Identifier:
    """What an alias's `previousId` is: the type it is known by, else the type the blocklist holds it by, else an
    anonymousId (marked, `_stored_previous_ids`, as it may yet prove a userId). A forgotten userId is no longer
    known as one, and typed as an anonymousId it passed the blocklist (which holds the digest of its user_id)
    and was stored again."""
    meanings = meanings_of(Identifier(PREVIOUS_ID, previous_id))
    known = next((meaning for meaning in meanings if meaning in found), None)
    if known is not None:
        return known
    blocked = graph.forgotten(meanings)  # answered by the lookup just made (`SqlIdentityGraph.profiles_of`)
    return next((meaning for meaning in meanings if meaning in blocked), meanings[-1])


def _named_by_alias(
    unknown: Sequence[Identifier], blocked: Collection[Identifier], graph: IdentityGraph
) -> dict[Identifier, str]:
    """The new userIds an earlier alias named as its previousId before they were known (stored then as marked
    anonymousIds), and the profile each joins.

    Without it, alias(previousId=X, userId=Y) before any event of userId X
    left X an anonymous id for good, and X's first event made a second
    profile. Forgetting the person puts X's user_id digest on the blocklist
    (`hub.store.forget`), so a userId X is `blocked` and never asked for here.
    """
    asked = {
        Identifier(ANONYMOUS_ID, ident.value): ident for ident in unknown if ident.type == USER_ID and ident not in blocked
    }
    if not asked:
        return {}
    return {asked[ident]: owner for ident, owner in graph.alias_previous_ids(list(asked)).items()}


def _stored_previous_ids(carried: Sequence[Identifier], new: Sequence[Identifier]) -> list[Identifier]:
    """The alias previousIds stored as anonymousIds for want of a known meaning (`_meaning`)."""
    values = {ident.value for ident in carried if ident.type == PREVIOUS_ID}
    return [ident for ident in new if ident.type == ANONYMOUS_ID and ident.value in values] if values else []


def as_carried(carried: Sequence[Identifier], blocked: Collection[Identifier]) -> tuple[Identifier, ...]:
    """The carried identifiers of forgotten people as the touchpoint carries them, an alias's `previous_id` under
    that type, so that what stores the touchpoint can leave each out."""
    return tuple(ident for ident in carried if carried_one_of(ident, blocked)) if blocked else ()


def carried_one_of(ident: Identifier, idents: Collection[Identifier]) -> bool:
    """Whether a carried identifier is one of `idents`, an alias's `previous_id` as either type it may be."""
    return any(meaning in idents for meaning in meanings_of(ident))


def meanings_of(ident: Identifier) -> tuple[Identifier, ...]:
    """What an identifier is looked up (and blocked) as: an alias's `previous_id` as each type it may be, an
    earlier userId or an anonymousId; any other as itself."""
    if ident.type != PREVIOUS_ID:
        return (ident,)
    return tuple(Identifier(type_, ident.value) for type_ in PREVIOUS_ID_MEANS)


def _by_digest(ident: Identifier, keys: ForgetKeys) -> Identifier:
    """A forgotten identifier as a refusal names it: by the digest the blocklist keeps, never by the value the person
    had erased, which the audit trail would otherwise write back in plain text, nor by its plain sha256 under
    HUB_FORGET_KEY, which anyone reverses by hashing guesses."""
    return Identifier(ident.type, keys.refusal_value(identifier_digest(ident)))


def _rule_against(
    owner: str,
    cluster: Sequence[str],
    apart: set[frozenset[str]],
    total: dict[str, int],
    extra: Mapping[str, int],
    config: IdentityConfig,
    enforce_limits: bool,
) -> str | None:
    """Why `owner`'s profile may not join the cluster (phrased for the audit log), or None."""
    if apart and any(frozenset((owner, member)) in apart for member in cluster):
        return KEPT_APART_RULE
    if not enforce_limits:
        return None
    for type_, count in extra.items():
        limit = config.limit(type_)
        if limit is not None and total.get(type_, 0) + count > limit:
            return _limit_rule(type_, limit)
    return None


def _has_room(type_: str, total: Mapping[str, int], config: IdentityConfig) -> bool:
    """Whether one more identifier of `type_` keeps the cluster within its type's limit."""
    limit = config.limit(type_)
    return limit is None or total.get(type_, 0) < limit


def _can_evict(
    type_: str, cluster: Sequence[str], counts: Mapping[str, Mapping[str, int]], evicting: Mapping[str, int],
    config: IdentityConfig,
) -> bool:
    """Whether a new identifier the limit has no room for may take the place of the oldest of its type
    (`evict_oldest`): only while the profiles joined so far still hold one not yet given up for another."""
    if not config.evicts_oldest(type_):
        return False
    stored = sum(counts.get(profile, {}).get(type_, 0) for profile in cluster)
    return evicting.get(type_, 0) < stored


def _moves_instead(type_: str, rule: str, total: Mapping[str, int], config: IdentityConfig) -> bool:
    """Whether an identifier whose profile a limit keeps out moves to the touchpoint's profile instead: a
    device's (`follows_last_login`) whose owner another person's sign-in refused, where it fits. Never against
    an unmerge's kept-apart pair: that is ops saying the two are different people, not a new sign-in."""
    return rule != KEPT_APART_RULE and config.follows_last_login(type_) and _has_room(type_, total, config)


def _limit_rule(type_: str, limit: int | None) -> str:
    return f"limit: at most {limit} {type_} per profile"
