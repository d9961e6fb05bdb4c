"""What people told providers about consent, each change with the identifier it came through, and what ops set.

The profile's `<channel>_opt_out` trait is what routing reads; these rows
are why it holds. They exist for the one operation a trait cannot survive:
an unmerge. The phone that texted STOP may go back to the restored profile,
and its opt-out must go with it, or the restored person can be texted again
while the survivor stays blocked for something they never said. Only a
digest of the identifier is kept (as the forgotten-identifier list does):
the rows outlive nothing the identifiers table does not already hold.

An opt-out said by an event (an identify's `sms_opt_out: true`) leaves no
row here, so what a delivery claim asks, whose consent may have gone since a
message was planned, is asked of the profiles themselves
(`profile_views.changed_since`).

A change ops make (`hub.consent.set_by_ops`) is kept here too, with the
identifier they named it by (`touchhub profiles consent email:...`) or none
(a profile id), and a reason naming who made it and why: `history` is what
`touchhub profiles show` and the explain answer list. Every change keeps the
profile it was made on (`origin_profile_id`), which a merge does not move:
an unmerge gives a change with no identifier back to the side it was made
on, or Bo's revocation, asked of support before a bad merge, stayed with Ana
and Bo could be emailed again.

A change said through an email's unsubscribe link keeps that message's
delivery id (`link`), so "Subscribe again" undoes only the unsubscribe its
own link made, while it is the latest change (`link_revocation_at`).

The provider's id of each message whose word was applied is kept too
(`first_said`): an inbound message's signature carries no time, so a
repeat of it (Twilio retrying the webhook, a captured one posted again)
would otherwise say a START again after the person's later STOP.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, delete, insert, select, update

from hub.clock import END_OF_TIME, utcnow
from hub.model import Identifier
from hub.store import sql
from hub.store.forget_digest import identifier_digest
from hub.store.traits import Traits, newest_traits, stamped_traits
from hub.store.schema import consent_changes, consent_messages, touchpoints

PINNED = END_OF_TIME  # the stamp no event's trait time reaches
PINNED_STAMP = PINNED.isoformat()
REASON_LENGTH = consent_changes.c.reason.type.length  # what the column holds: a longer reason fails on PostgreSQL


class Word(NamedTuple):
    """What the person last said about a channel through a provider, and when."""

    granted: bool
    at: datetime


def opt_out_trait(channel: str) -> str:
    return f"{channel}_opt_out"


def record(
    connection: Connection, profile_id: str, channel: str, granted: bool, through: Identifier | None, reason: str,
    at: datetime, origin: str, link: str | None = None,
) -> None:
    """Keep the change, stamped no earlier than now, with the profile it was asked of (`origin`, as named: a
    profile merged away since gets it back from an unmerge, `split`) and the message whose unsubscribe `link`
    made it (its delivery id): "Subscribe again" undoes only that link's own unsubscribe (`link_revocation_at`).
    Its writer (`hub.consent.set_consent`) holds the profiles lock.

    Callers stamp `at` when the person's word came in (a STOP's request), and
    it may then wait for that lock while another word is applied. Stamped
    with the request's time, a STOP that waited behind a START would read as
    the older word here (an unmerge's latest word, `split`) while the traits
    hold it as the newer one.
    """
    connection.execute(
        insert(consent_changes).values(
            profile_id=profile_id, channel=channel, granted=granted,
            identifier_digest=identifier_digest(through) if through else None, delivery_id=link, reason=reason,
            at=max(at, utcnow()), origin_profile_id=origin,
        )
    )


def latest(connection: Connection, profile_id: str, channel: str) -> Row[Any] | None:
    """The latest change kept for the profile's `channel` (granted, delivery_id, reason, at), or None."""
    return connection.execute(
        select(consent_changes.c.granted, consent_changes.c.delivery_id, consent_changes.c.reason, consent_changes.c.at)
        .where(consent_changes.c.profile_id == profile_id, consent_changes.c.channel == channel)
        .order_by(consent_changes.c.at.desc(), consent_changes.c.id.desc())
        .limit(1)
    ).first()


def link_revocation_at(connection: Connection, profile_id: str, channel: str, link: str) -> datetime | None:
    """When the unsubscribe link of the message `link` revoked `channel`, if that is the latest change kept for the
    channel (no newer link's unsubscribe, no ops change, no grant since); None otherwise."""
    word = latest(connection, profile_id, channel)
    return word.at if word is not None and not word.granted and word.delivery_id == link else None


def event_traits_since(connection: Connection, profile_id: str, since: datetime) -> Iterator[dict[str, Any]]:
    """The traits each of the profile's events received after `since` carried: an opt-out an event says after an
    unsubscribe leaves no change here, and the unsubscribe's pin hides it in the profile's traits."""
    return connection.execute(
        select(touchpoints.c.traits).where(touchpoints.c.profile_id == profile_id, touchpoints.c.received_at > since)
    ).scalars()


def first_said(connection: Connection, destination_id: str, message_id: str, at: datetime) -> bool:
    """Note that the message `message_id` of `destination_id` said a consent word; False if it was noted before.

    Noted in the caller's transaction, before its word is applied: a repeat posted at the same time waits on
    the key, then finds it.
    """
    row = {"destination_id": destination_id, "message_id": message_id, "received_at": at}
    return sql.insert_ignoring_conflicts(connection, consent_messages, [row], ["destination_id", "message_id"]) == 1


def granted_since(connection: Connection, profile_id: str, channel: str, since: datetime) -> bool:
    """Whether the person gave `channel` consent through a provider (an SMS START) after `since`."""
    return connection.execute(
        select(consent_changes.c.id).where(
            consent_changes.c.profile_id == profile_id, consent_changes.c.channel == channel,
            consent_changes.c.granted.is_(True), consent_changes.c.at > since,
        ).limit(1)
    ).first() is not None


def said(traits: Traits, channel: str, word: Word) -> Traits:
    """`traits` after the person's word through a provider.

    A revocation is pinned (stamped `PINNED`): no event's trait undoes it,
    whatever its time, since mobile SDKs resend cached traits (an old
    `sms_opt_out: false`) on every event. A grant (an SMS START) takes back
    that pin and any older opt-out, in either form (`<channel>_opt_out`,
    `consent.<channel>`), but is stamped with its own time: an opt-out the
    person makes afterwards, in the app's settings or a CRM form, still
    wins. A stale cached opt-out resent after a START blocks again, which
    errs on the side of not messaging.

    The grant sets both forms, `consent.<channel>` even when the profile has
    no such part yet: a form without the grant's time has none to lose by,
    so an older `consent: {email: false}` arriving late took the channel
    back, where the same word as `email_opt_out: true` lost.
    """
    key = opt_out_trait(channel)
    if not word.granted:
        return newest_traits(traits, stamped_traits({key: True}, PINNED))
    granted = {key: False, "consent": {channel: True}}
    return newest_traits(_unpinned(traits, [channel]), stamped_traits(granted, word.at))


def history(connection: Connection, profile_id: str) -> list[dict[str, Any]]:
    """Every change kept for the profile, oldest first: the channel, granted or not, the reason (who and why), when."""
    return [
        dict(row)
        for row in connection.execute(
            select(consent_changes.c.channel, consent_changes.c.granted, consent_changes.c.reason, consent_changes.c.at)
            .where(consent_changes.c.profile_id == profile_id)
            .order_by(consent_changes.c.at, consent_changes.c.id)
        ).mappings()
    ]


def split(
    connection: Connection, survivor_id: str, restored_id: str, moved: Collection[Identifier], split_off: Collection[str]
) -> tuple[dict[str, Word], dict[str, Word]]:
    """Move to the restored profile the changes that came through `moved` identifiers, and those with no
    identifier made on one of the `split_off` profiles (the restored one and those merged into it before); each
    side's latest word per channel. The other changes with no identifier (ops' on the survivor, those kept
    before their profile was) stay with the survivor."""
    digests = {identifier_digest(ident) for ident in moved}
    rows = connection.execute(
        select(
            consent_changes.c.id, consent_changes.c.channel, consent_changes.c.granted, consent_changes.c.at,
            consent_changes.c.identifier_digest, consent_changes.c.origin_profile_id,
        )
        .where(consent_changes.c.profile_id == survivor_id)
        .order_by(consent_changes.c.at, consent_changes.c.id)
    ).all()
    leaving = {
        row.id for row in rows
        if (row.identifier_digest in digests if row.identifier_digest else row.origin_profile_id in split_off)
    }
    if leaving:
        connection.execute(update(consent_changes).where(consent_changes.c.id.in_(sorted(leaving))).values(profile_id=restored_id))
    return _latest(row for row in rows if row.id not in leaving), _latest(row for row in rows if row.id in leaving)


def _latest(rows: Iterable[Any]) -> dict[str, Word]:
    return {row.channel: Word(row.granted, row.at) for row in rows}  # rows come oldest first: the last one per channel wins


def pinned(traits: Traits, latest: dict[str, Word], gone: Collection[str] = ()) -> Traits:
    """`traits` with each channel's latest word (`said`), and the pins of `gone` channels (said by identifiers the
    profile no longer holds) dropped, so the value its own events set shows again."""
    values, times = _unpinned(traits, gone)
    for channel, word in latest.items():
        values, times = said((values, times), channel, word)
    return values, times


def _unpinned(traits: Traits, channels: Iterable[str]) -> Traits:
    """A copy of `traits` without what providers pinned for these channels."""
    values, times = dict(traits[0]), dict(traits[1])
    for key in map(opt_out_trait, channels):
        if times.get(key) == PINNED_STAMP:
            del values[key], times[key]
    return values, times


def forget(connection: Connection, profile_ids: Collection[str]) -> None:
    connection.execute(delete(consent_changes).where(consent_changes.c.profile_id.in_(list(profile_ids))))
