"""Channel consent on a profile, changed by what recipients tell providers.

Consent is a profile trait (`<channel>_opt_out`, or `consent: {<channel>:
false}` as Segment-style traits carry it), read by `consent_revoked` both
when routing plans a message and when the delivery engine claims it: an
unsubscribe link, an SMS STOP or a provider's "unsubscribed" refusal stops
a message planned before it too (one held by a delay or quiet hours).

A revocation the person made through a provider is stamped as of the end
of time (`PINNED`), so no trait in an event undoes it, whatever its time:
mobile SDKs resend cached traits on every event (`context.traits.sms_opt_out:
false` from an old identify), and stamped with the event's time one would
turn SMS back on right after a STOP. Only the person's next word through a
provider (an SMS START) takes it back, as subscription states work in Braze
or Customer.io rather than as plain attributes; that grant is stamped with
its own time, so an opt-out they make later anywhere still holds
(`consent_changes.said`). Each such change is also
recorded with the identifier it came through (`hub.store.consent_changes`),
so an unmerge gives it to the profile that keeps that identifier.

Ops change it the same way (`set_by_ops`: the admin API's PUT
/api/profiles/{id}/consent/{channel}, `touchhub profiles consent`), recorded
with the identifier they named, if any, and the profile, and so
does the person on the unsubscribe page ("Subscribe again"): email has no
START, and an unsubscribe could not be taken back even when they asked, as
Novu's preferences API, Braze and Customer.io let them; it undoes only the
unsubscribe its own link made, while that is the person's latest word on the
channel (`subscribe_again`). A grant lets routing
and the delivery claim send on that channel again; deliveries already failed
as blocked by consent stay as they are.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from sqlalchemy import Connection

from hub.model import Identifier
from hub.store import consent_changes
from hub.store.consent_changes import REASON_LENGTH, Word, opt_out_trait
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import find_profile_id, live_profile_id
from hub.store.sql import lock_profiles
from hub.utf8 import has_utf8_form

log = structlog.get_logger(__name__)


# The characters ops may give as the reason for a change; the rest of the column (REASON_LENGTH) names who made it.
OPS_REASON_LENGTH = 60
# Trait values as CRMs and forms send them: a string "false" is not an opt-out (bool("false") is True).
_YES = {True, 1, "true", "yes", "1", "y", "on"}
_NO = {False, 0, "false", "no", "0", "n", "off"}


def consent_revoked(traits: dict[str, Any], channel: str) -> bool:
    """`<channel>_opt_out` says yes, or `consent.<channel>` says no (booleans, 1/0, or their usual words)."""
    consent = traits.get("consent")
    given = consent.get(channel) if isinstance(consent, dict) else None
    return _said(traits.get(opt_out_trait(channel)), _YES) or _said(given, _NO)


def _said(value: Any, words: set[Any]) -> bool:
    if isinstance(value, str):
        value = value.strip().lower()
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return not isinstance(value, (dict, list)) and value is not None and value in words


def lock_before_deliveries(connection: Connection, consent_changes: bool) -> None:
    """Take the profiles lock now, before any delivery row, when this transaction will change consent too.

    Consent is a profile change, so `set_consent` takes the lock; after the
    rows a provider's word updates (a refusal, a status callback), that is
    the opposite of the pipeline's order, which holds the lock while a merge
    repoints the person's deliveries: a deadlock on PostgreSQL, and a
    rolled-back delivery batch is sent again once its lease runs out.
    """
    if consent_changes:
        lock_profiles(connection)


def set_consent(
    connection: Connection, profile_id: str | None, channel: str, granted: bool, at: datetime, reason: str,
    through: Identifier | None, graph: SqlIdentityGraph | None = None, link: str | None = None,
) -> str | None:
    """Grant or revoke `channel`, `at` the time the person said so (logged; a revocation is `PINNED`), for whoever
    holds `through` now (the address a message went to) or, when nobody does, for `profile_id` (or the profile
    it was merged into); the profile changed, None if there is no such profile. The traits are changed through
    `graph` when given, which then holds them as written, for a caller to answer from without reading them again.
    `link` is the delivery id of the message whose unsubscribe link said it, kept with the change, as is the
    profile it was asked of (`profile_id`, else the holder of `through`).
    """
    live_id, holds_through = consent_holder(connection, profile_id, through)
    if live_id is None:
        return None
    _apply(connection, live_id, profile_id, channel, Word(granted, at), reason, through if holds_through else None,
           graph, link)
    return live_id


def _apply(
    connection: Connection, live_id: str, asked_of: str | None, channel: str, word: Word, reason: str,
    through: Identifier | None, graph: SqlIdentityGraph | None = None, link: str | None = None,
) -> None:
    """Change `live_id`'s traits by the word and keep the change (`consent_holder` found whose it is; `through`
    only if they hold it), with the profile it was asked of (`asked_of`, else `live_id`)."""
    graph = graph or SqlIdentityGraph(connection)
    graph.change_traits(live_id, lambda traits: consent_changes.said(traits, channel, word))
    consent_changes.record(connection, live_id, channel, word.granted, through, reason, word.at, asked_of or live_id, link)
    log.info("consent changed", profile_id=live_id, channel=channel, granted=word.granted, reason=reason,
             at=word.at.isoformat())


def consent_holder(connection: Connection, profile_id: str | None, through: Identifier | None) -> tuple[str | None, bool]:
    """Whose consent a word changes, under the profiles lock, and whether they hold `through`: the holder of
    `through` first (an unmerge since the message was sent may have given the address back to another profile,
    and the person who clicks the link, or whose number refuses, is the address's owner), else `profile_id`'s
    survivor; None when neither is a profile."""
    lock_profiles(connection)
    holder = find_profile_id(connection, through) if through else None
    return holder or (live_profile_id(connection, profile_id) if profile_id else None), holder is not None


class LinkWord(NamedTuple):
    """What a word said through an unsubscribe link did: the profile the link speaks for (None: no such profile
    is left), and whether the word was applied ("Subscribe again" is not, once the link's unsubscribe is no
    longer the person's latest word on the channel)."""

    profile_id: str | None
    applied: bool


def subscribe_again(
    connection: Connection, profile_id: str, channel: str, link: str | None, at: datetime, reason: str,
    through: Identifier | None,
) -> LinkWord:
    """Undo the unsubscribe the link of message `link` made, and only while it is the person's latest word on
    `channel`: any past email's link gave consent back, even after a newer link's unsubscribe, an ops revocation
    or an opt-out an event said since, so whoever held an old forwarded email could subscribe them again."""
    live_id, holds_through = consent_holder(connection, profile_id, through)
    if live_id is None:
        return LinkWord(None, False)
    if link is None or not _link_word_stands(connection, live_id, channel, link):
        return LinkWord(live_id, False)
    _apply(connection, live_id, profile_id, channel, Word(True, at), reason, through if holds_through else None,
           link=link)
    return LinkWord(live_id, True)


def _link_word_stands(connection: Connection, profile_id: str, channel: str, link: str) -> bool:
    """Whether the unsubscribe of `link` is the latest change kept for the channel and no event has revoked the
    channel since (which the unsubscribe's pin hides in the traits)."""
    since = consent_changes.link_revocation_at(connection, profile_id, channel, link)
    return since is not None and not any(
        consent_revoked(traits, channel) for traits in consent_changes.event_traits_since(connection, profile_id, since)
    )


def set_consent_by_identifier(
    connection: Connection, identifier: Identifier, channel: str, granted: bool, at: datetime, reason: str
) -> str | None:
    """The same, for the profile holding `identifier` (an SMS STOP knows only the phone number)."""
    return set_consent(connection, None, channel, granted, at, reason, identifier)


def unknown_channel(channel: str, channels: Collection[str]) -> str | None:
    """Why ops cannot set consent for `channel`, or None: a typo (`emial`) would record a consent nothing reads."""
    if channel in channels:
        return None
    return f"{channel!r} has no route in routes.yaml; use one of {', '.join(sorted(channels))}"


def set_by_ops(
    connection: Connection, profile_id: str, channel: str, granted: bool, reason: str, who: str, at: datetime,
    through: Identifier | None = None,
) -> dict[str, Any] | None:
    """Grant or revoke `channel` because ops say so (the person asked support; a CRM record says so), as the
    person's own word through a provider is applied: a revocation pinned, a grant stamped `at` so an opt-out
    said later anywhere still holds. Recorded with `who` and `reason`, so `profiles show` says who changed it
    and why, and with the identifier ops named the person by (`through`), so an unmerge gives the change to
    the side that holds it. The channel's state after, or None if there is no such profile (or it was
    forgotten)."""
    recorded = ops_reason(who, reason)
    graph = SqlIdentityGraph(connection)
    live_id = set_consent(connection, profile_id, channel, granted, at, recorded, through, graph)
    if live_id is None:
        return None
    traits = graph.traits(live_id)
    return {
        "profile_id": live_id, "channel": channel, "granted": not consent_revoked(traits, channel),
        "reason": recorded, "changed_at": at,
    }


def ops_reason_problem(reason: str) -> str | None:
    """What is wrong with the reason ops give for a change, or None: the record must say why, and fit its column."""
    if not reason.strip():
        return "say why consent changes (e.g. 'asked support by phone, ticket 4521'); it is recorded"
    if len(reason) > OPS_REASON_LENGTH:
        return f"at most {OPS_REASON_LENGTH} characters ({len(reason)} given); shorten it"
    if "\x00" in reason:
        return "contains \\u0000 (NUL), which the store cannot hold; remove it"
    if not has_utf8_form(reason):
        return "contains a lone surrogate (such as \\ud800), which has no UTF-8 form the store can hold; remove it"
    return None


def ops_reason(who: str, reason: str) -> str:
    """The reason recorded for an ops change, `who` cut short to fit the column beside a reason of at most
    OPS_REASON_LENGTH characters (an API key's name may take the whole column)."""
    room = REASON_LENGTH - len(reason) - len("ops : ")
    if len(who) > room:
        who = who[: room - 1] + "…"
    return f"ops {who}: {reason}"
