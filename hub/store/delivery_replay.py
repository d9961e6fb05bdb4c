"""Sending a dead or failed delivery again (the dead-letter queue's replay), and what may never go again."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Row, select, update

from hub.consent import consent_revoked
from hub.model import FALLBACK
from hub.routes_file import AddresseeOf, Unrouted
from hub.store import consent_changes, decisions, withdrawals
from hub.store.consent_changes import PINNED_STAMP, opt_out_trait
from hub.store.outbox import MAY_HAVE_REACHED
from hub.store.outbox import FORGOTTEN_TARGET  # forget's mark on a delivery: `replay` answers FORGOTTEN for it
from hub.store.profile_views import live_profile_id
from hub.store.schema import deliveries, identifiers, profiles
from hub.store.traits import part_time_key

REPLAYABLE_STATUSES = ("dead", "failed")
FORGOTTEN = "forgotten"
MISADDRESSED = "misaddressed"  # withdrawn in an unmerge (`withdrawals.WITHDRAWN_IN_UNMERGE`)
HANDED_ON = "handed_on"  # a push to devices that are all another person's now
ADDRESS_GONE = "address_gone"  # to an address its person holds no more (a hard bounce, an unregistered token)
CONSENT_WITHDRAWN = "consent_withdrawn"  # its person revoked consent to its channel (`OptedOut`), and still has
FELL_BACK = "fell_back"  # its action fell back to the next channel in its place
FOLLOWED_UP = "followed_up"  # a nudge its person made needless inside the wait (`withdrawals.WITHDRAWN_FOLLOWED_UP`)
UNROUTED_CHANNEL = "unrouted_channel"  # of a channel routes.yaml routes no more, to an address maybe still held


# Why a refused replay is refused, after "delivery '<id>' ", by what `replay` returned.
_REFUSED_BECAUSE = {
    FORGOTTEN: "was to a person since forgotten (erased on request); it is never sent again",
    MISADDRESSED: ("was planned while two people were one profile and an unmerge withdrew it; it would reach, or "
                   "carry, the wrong person, so it is never sent again"),
    HANDED_ON: ("was a push to a device another person has signed in on since; it would show on their screen, so it "
                "is never sent again"),
    ADDRESS_GONE: ("was to an address its person no longer has (the provider said it does not exist, or it is another "
                   "person's now); it would reach no one or the wrong person, so it is never sent again: once the "
                   "person gives a working address, a new message goes to it"),
    CONSENT_WITHDRAWN: ("is to a person who revoked consent to its channel ({said}), and they still have; it is not "
                        "sent while they do: once they consent again, it may be replayed"),
    FOLLOWED_UP: ("was a nudge withdrawn because its person did what it waited for inside the wait (the follow-up "
                  "arrived after its timer fired); it is never sent again"),
    FELL_BACK: ("could not go and its rule's fallback channel was planned in its place (see its decision); sending it "
                "as well would message the person twice, so it is never sent again"),
    UNROUTED_CHANNEL: ("is on a channel routes.yaml no longer routes, and only its route says what its target is, "
                       "so whether its person still holds that address cannot be checked; it is not sent: add the "
                       "channel's route back to routes.yaml to replay it, or leave it dead"),
}


class OptedOut(str):
    """CONSENT_WITHDRAWN as `replay` returns it, with the opt-out it found (`said`: which trait, and when), for
    `why_not_replayed` to name. A str equal to CONSENT_WITHDRAWN, so callers compare and count it as the others
    (`touchhub deliveries replay --all` counts them by reason)."""

    said: str

    def __new__(cls, said: str) -> OptedOut:
        outcome = super().__new__(cls, CONSENT_WITHDRAWN)
        outcome.said = said
        return outcome


def why_not_replayed(delivery_id: str, previous: str) -> str:
    """What the API and the CLI answer when `replay` returned `previous`, not a replayable status."""
    because = _REFUSED_BECAUSE.get(previous)
    if because is not None:
        said = previous.said if isinstance(previous, OptedOut) else "see its profile"
        return f"delivery {delivery_id!r} {because.format(said=said)}"
    return f"delivery {delivery_id!r} is {previous}; only {' or '.join(REPLAYABLE_STATUSES)} ones are replayed"


def replay(connection: Connection, delivery_id: str, now: datetime, recipient: AddresseeOf) -> str | None:
    """Queue a dead or failed delivery again with a fresh retry budget.

    Returns the status the delivery had (the caller tells "replayed" from "not
    replayable" by it), FORGOTTEN for one whose person was erased on request
    (it has no recipient left, and must reach no one), MISADDRESSED for one an
    unmerge withdrew, HANDED_ON for a push to devices that are all another
    person's now, ADDRESS_GONE for one to an address its person holds no more,
    CONSENT_WITHDRAWN (an `OptedOut`) for one whose person has revoked consent
    to its channel, before it failed (withdrawn at its claim) or since it did
    (a dead letter: replayed, its claim withdrew it after the operator was told
    it went), while it stays revoked, FELL_BACK for one
    whose action fell back to its next channel (`Responder.fall_back`: the
    person got, or was planned, that message instead, and would hear twice),
    UNROUTED_CHANNEL for one of a channel routes.yaml routes no more (`_unrouted`),
    or None when there is no such delivery. Attempt numbers keep counting, so
    the log shows the replayed attempts after the old ones.

    The row is read locked: on PostgreSQL two replays at once (a double
    click, two operators) both read `dead` and both answered "replayed", each
    rewriting the row, over a send already claimed too. The second now reads
    what the first made of it, pending, and is refused as any pending one.

    A delivery goes only to the addresses its person (its profile's survivor)
    still holds (`_not_theirs`; `recipient`, the routes' `addressee_of`,
    says what identifier its target is, that it names a profile, or that its
    channel has no route, which leaves that unknown: `_unrouted`): a hard
    bounce or an unregistered token took the address off the profile, or an
    unmerge or another person's sign-in on the device gave it to someone
    else, but the failed delivery kept it, and its replay mailed the dead
    address again or reached the other person. A push to several devices
    goes to the person's own ones only, or nowhere (HANDED_ON when a device
    is another person's now, else ADDRESS_GONE).

    The provider's id and status of the last message go (its attempt keeps
    the id): a late repeat of that message's callback (Twilio retrying it, or
    a captured one posted again) found the replayed delivery by it and
    settled it, unsent or failing to send. The delivery takes the id of the
    message its replay sends.
    """
    row = connection.execute(
        select(
            deliveries.c.status, deliveries.c.attempts, deliveries.c.channel, deliveries.c.target,
            deliveries.c.last_error, deliveries.c.profile_id, deliveries.c.content,
        ).where(deliveries.c.delivery_id == delivery_id).with_for_update()
    ).first()
    if row is None:
        return None
    if row.target == FORGOTTEN_TARGET:
        return FORGOTTEN
    if row.status not in REPLAYABLE_STATUSES:
        return row.status
    if refused := _never_again(connection, delivery_id, row):
        return refused
    address = recipient(row.channel, row.target)
    if isinstance(address, Unrouted):
        return _unrouted(connection, row)
    readdressed: dict[str, Any] = {}
    if address is not None:
        kept = _theirs_only(connection, row, address.type)
        if isinstance(kept, str):
            return kept
        readdressed = kept
    connection.execute(
        update(deliveries)
        .where(deliveries.c.delivery_id == delivery_id)
        .values(
            status="pending", next_attempt_at=now, claimed_until=None, updated_at=now, retry_from_attempt=row.attempts,
            retry_from=now, provider_message_id=None, provider_status=None, **readdressed,
        )
    )
    return row.status


def _never_again(connection: Connection, delivery_id: str, row: Row[Any]) -> str | None:
    """Why a dead or failed delivery must not go again (None: it may): withdrawn in an unmerge, from a device
    handed on, or by a late follow-up; its person's consent to its channel revoked (`_opted_out`); or its action
    fell back in its place. Only failed ones can have been withdrawn (the hub's own `last_error`), and only
    those with a fallback record can have fallen back."""
    last_error = row.last_error or ""
    if last_error in (withdrawals.WITHDRAWN_IN_UNMERGE, *withdrawals.WITHDRAWN_IN_UNMERGE_BEFORE):
        return MISADDRESSED
    if last_error == withdrawals.WITHDRAWN_DEVICE_HANDED_ON:
        return HANDED_ON
    if last_error.startswith(withdrawals.WITHDRAWN_FOLLOWED_UP):
        return FOLLOWED_UP
    if (opted_out := _opted_out(connection, row)) is not None:
        return opted_out
    if FALLBACK in row.content and _fell_back(connection, row.content[FALLBACK]["decision_id"], delivery_id):
        return FELL_BACK
    return None


def _opted_out(connection: Connection, row: Row[Any]) -> OptedOut | None:
    """The trait by which the delivery's person (its live profile) revoked consent to its channel, and when, as
    an `OptedOut`; None while they consent. The claim would withdraw it unsent, as blocked by consent, after the
    replay answered "replayed"."""
    live_id = live_profile_id(connection, row.profile_id)
    found = connection.execute(
        select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == live_id)
    ).first()
    if found is None:
        return None
    opt_out, consent = opt_out_trait(row.channel), f"consent.{row.channel}"
    for shown, trait, stamp_key in ((opt_out, opt_out, opt_out), (consent, "consent", part_time_key("consent", row.channel))):
        if consent_revoked({trait: found.traits.get(trait)}, row.channel):
            stamp = found.trait_times.get(stamp_key) or found.trait_times.get(trait)
            return OptedOut(f"{shown} {_said_when(connection, live_id, row.channel, stamp)}")
    return None


def _said_when(connection: Connection, profile_id: str, channel: str, stamp: str | None) -> str:
    """When and how a revocation was said: by an event's trait, at its time; through a provider, the unsubscribe
    page or ops (stamped `PINNED`), as the consent history records it."""
    if stamp is None:
        return "set"
    if stamp != PINNED_STAMP:
        return f"set by an event at {datetime.fromisoformat(stamp).astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    word = consent_changes.latest(connection, profile_id, channel)
    if word is None or word.granted:
        return "set"
    return f"set at {word.at:%Y-%m-%d %H:%M:%S} UTC: {word.reason}"


def _fell_back(connection: Connection, decision_id: str, delivery_id: str) -> bool:
    """Whether the decision records that the delivery fell back to its action's next channel, and that a
    fallback planned in its place may have reached the person: one whose fallbacks all found no way (no
    address, no consent), or all failed having reached no one (an email that bounced), left the person
    nothing, and its replay is their one message."""
    decision = decisions.get(connection, decision_id)
    planned = _fallbacks_planned(decision["actions"], delivery_id) if decision is not None else []
    return bool(planned) and _any_may_have_arrived(connection, planned)


def _fallbacks_planned(fates: list[dict[str, Any]], delivery_id: str) -> list[str]:
    """The deliveries planned in a decision's `fates` after the delivery's `fell_back`, to its chain of
    fallbacks' end (`Router.fall_back` writes them in place of its own, each channel unable to carry it a
    `fell_back` of its own, and so does a fallback delivery that failed in turn, until one is planned or none
    is left)."""
    at = next((n for n, fate in enumerate(fates) if fate.get("delivery_id") == delivery_id and fate["fate"] == "fell_back"), None)
    if at is None:
        return []
    planned: list[str] = []
    for fate in fates[at + 1:]:
        if "delivery_id" in fate:
            planned.append(fate["delivery_id"])
        if fate["fate"] != "fell_back":
            break
    return planned


def _any_may_have_arrived(connection: Connection, delivery_ids: list[str]) -> bool:
    """Whether one of these deliveries went, or may still go or have gone: any but a failed one, and a failed
    one whose last attempt may have arrived (as the daily cap counts them: `outbox.going_since`)."""
    return connection.execute(
        select(deliveries.c.delivery_id).where(
            deliveries.c.delivery_id.in_(delivery_ids),
            MAY_HAVE_REACHED,
        ).limit(1)
    ).first() is not None


def _unrouted(connection: Connection, row: Row[Any]) -> str:
    """Why a delivery of a channel routes.yaml routes no more is not replayed. Only the route said what kind of
    identifier its target is, so it is judged by the stored target alone: recipients its person holds as no
    identifier of any kind (it bounced, the app was uninstalled, the device is another person's) refuse it as
    a routed one would be, for good; else (a profile's target, the profile a merge since folded into the
    delivery's survivor as well, or an address still held, maybe as another kind: an email that is also the
    user_id) it waits, UNROUTED_CHANNEL, for the route to come back and tell."""
    if live_profile_id(connection, row.target) is None:
        refused = _theirs_only(connection, row, None)
        if isinstance(refused, str):
            return refused
    return UNROUTED_CHANNEL


def _theirs_only(connection: Connection, row: Row[Any], type_: str | None) -> dict[str, Any] | str:
    """The delivery's new target and content, narrowed to the recipients its person still holds (`_not_theirs`;
    nothing to change when they hold them all), or why it is refused when they hold none: HANDED_ON when a
    device is another person's now, else ADDRESS_GONE."""
    gone = _not_theirs(connection, row, type_)
    if not gone:
        return {}
    narrowed = withdrawals.without_recipients(row.target, row.content, gone)
    if narrowed is not None:
        return narrowed
    return HANDED_ON if withdrawals.handed_on(connection, row.profile_id, sorted(gone)) else ADDRESS_GONE


def _not_theirs(connection: Connection, row: Row[Any], type_: str | None) -> set[str]:
    """The delivery's recipients its person's live profile holds no more as identifiers of `type_` (an email that
    is also the person's user_id left all the same), or of any type with `type_` None."""
    recipients = withdrawals.recipients_of(row.target, row.content)
    live_id = live_profile_id(connection, row.profile_id)
    query = select(identifiers.c.value).where(identifiers.c.value.in_(recipients), identifiers.c.profile_id == live_id)
    if type_ is not None:
        query = query.where(identifiers.c.type == type_)
    return set(recipients).difference(connection.execute(query).scalars())


def ids_with_status(connection: Connection, status: str, destination_id: str | None = None) -> list[str]:
    """Delivery ids in `status`, oldest first, optionally of one destination (bulk replay)."""
    query = select(deliveries.c.delivery_id).where(deliveries.c.status == status).order_by(deliveries.c.created_at)
    if destination_id:
        query = query.where(deliveries.c.destination_id == destination_id)
    return list(connection.execute(query).scalars())
