"""Messages taken back before they go: what an unmerge, a forget or a shared device's new owner withdraws.

A withdrawn delivery is failed without an attempt, its last error saying why;
`hub.store.delivery_replay` refuses to send such a one again.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, select, update

from hub.model import FALLBACK, Delivery
from hub.pii import TOKEN_TYPES
from hub.store.outbox import DELIVERY_COLUMNS, UNSENT_STATUSES
from hub.store.profile_views import live_profile_ids
from hub.store.schema import deliveries, identifiers

# What an unmerge (`hub.store.identity_repair`) leaves as the last error of the messages it withdraws: planned
# for, or carrying, the other person while the two were one profile.
WITHDRAWN_IN_UNMERGE = "not sent: planned for the other person while two people were one profile (unmerged since)"
# The same, as withdrawals before 2026-12-06 were worded.
WITHDRAWN_IN_UNMERGE_BEFORE = ("not sent: recipient left the profile in an unmerge",)
# The last error of a push withdrawn because its device's token moved to another person who signed in on it
# (`hub.identity`'s `follows_last_login`).
WITHDRAWN_DEVICE_HANDED_ON = "not sent: another person has signed in on the device since (its push token is theirs now)"
# The last error of a message withdrawn at its claim because its person revoked consent to its channel since it
# was planned (`hub.claim_checks`); a replay is refused while consent stays revoked.
WITHDRAWN_CONSENT_REVOKED = "not sent: consent was revoked after it was planned"
# How the last error of a nudge a late follow-up withdrew begins (`timer_arming.withdraw_followed_up`; the event and
# its time follow): the person did what it waited for, so it is never replayed.
WITHDRAWN_FOLLOWED_UP = "not sent: its follow-up ("
# The last error of a multicast (a push to every device of the person) withdrawn at its claim because none of the
# devices it was to go to is the person's any more: FCM called them dead, newer ones took their place, or another
# person signed in on them (`hub.claim_checks`).
WITHDRAWN_DEVICES_GONE = "not sent: none of its devices is the person's any more"


class FallBack(Protocol):
    """Plans a failed or withdrawn delivery's fallback (`Responder.fall_back`); returns how many deliveries that
    planned. `unreachable`: its provider said it cannot reach the person there, refusing the message at send
    (`hub.delivery_record`) or reporting one it took undelivered (`hub.provider_reports`)."""

    def __call__(
        self, connection: Connection, delivery: Delivery, why: str, now: datetime, *, unreachable: bool = False
    ) -> int: ...


def withdraw(
    connection: Connection, delivery_ids: Sequence[str], now: datetime, reason: str, fall_back: FallBack | None = None,
    *, statuses: Sequence[str] = UNSENT_STATUSES,
) -> list[str]:
    """Settle deliveries as failed without an attempt (`reason` as their last error): never sent, and never
    retried; returns the ids withdrawn. Claimed ones (the claim-time checks), or any not yet sent (forget, an
    unmerge): one in flight meanwhile keeps its lease (renewed while it lasts: an erasure of the record it may
    write waits for it) and this status when its attempt is recorded. None given, nothing is written.

    Only one still in `statuses` (not sent yet; an unmerge also takes failed ones) is withdrawn: read without
    a lock, one another node recorded `sent` meanwhile was written over as "not sent" (PostgreSQL re-checks
    the condition after the row lock's wait), and a push that went had its fallback planned too.

    With `fall_back`, each withdrawn delivery whose action names fallbacks has them planned, in this
    transaction, after the withdrawal (so the daily cap no longer counts it): routing falls back for a person
    it cannot reach at planning, and one found unreachable later (their device handed on) must not hear
    nothing for it. `fall_back` judges whether the delivery's address is gone.
    """
    if not delivery_ids:
        return []
    withdrawn = sorted(connection.execute(
        update(deliveries).where(deliveries.c.delivery_id.in_(delivery_ids), deliveries.c.status.in_(statuses))
        .values(status="failed", last_error=reason, updated_at=now)
        .returning(deliveries.c.delivery_id, *DELIVERY_COLUMNS)  # as `Delivery` takes them, for `fall_back`
    ).all(), key=lambda row: row.delivery_id)
    if fall_back is not None:
        for row in withdrawn:
            if FALLBACK in row.content:
                fall_back(connection, Delivery(*row), reason, now)
    return [row.delivery_id for row in withdrawn]


def drop_recipient(
    connection: Connection, profile_id: str, value: str, now: datetime, reason: str, fall_back: FallBack | None = None
) -> int:
    """Take `value` out of the profile's messages not yet sent; returns how many it was in.

    A message to it alone is withdrawn (`reason` its last error; its fallbacks planned with `fall_back`, as
    `withdraw` does); one to several (a multicast's `recipients`: every push token of the person) goes on
    to the others, and needs none.
    """
    unsent = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.target, deliveries.c.content)
        .where(deliveries.c.profile_id == profile_id, deliveries.c.status.in_(UNSENT_STATUSES))
    ).all()
    alone, shared = [], 0
    for delivery_id, target, content in unsent:
        if value not in recipients_of(target, content):
            continue
        narrowed = without_recipients(target, content, {value})
        if narrowed is None:
            alone.append(delivery_id)
            continue
        shared += 1
        readdress(connection, delivery_id, narrowed, now)
    return len(withdraw(connection, alone, now, reason, fall_back)) + shared


def readdress(connection: Connection, delivery_id: str, narrowed: dict[str, Any], now: datetime) -> None:
    """Write a delivery's target and content as `without_recipients` narrowed them: its attempts, retries and
    replays go to those recipients only, and the delivery log shows whom it went to."""
    connection.execute(update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(**narrowed, updated_at=now))


def recipients_of(target: str, content: dict[str, Any]) -> list[str]:
    """Whom a delivery goes to: its target, or a multicast's `recipients` (every device of the person)."""
    return list(content.get("recipients") or [target])


def without_recipients(target: str, content: dict[str, Any], gone: Container[str]) -> dict[str, Any] | None:
    """A delivery's target and content with the `gone` recipients taken out; None when none is left."""
    kept = [recipient for recipient in recipients_of(target, content) if recipient not in gone]
    if not kept:
        return None
    return {"target": kept[0] if target in gone else target, "content": {**content, "recipients": kept}}


def lost_recipients(connection: Connection, multicasts: Sequence[Delivery]) -> dict[str, set[str]]:
    """The recipients each of these deliveries' people no longer holds, by delivery id (those that lost none
    left out), in two statements whatever their number: the people's live profiles, then which of the
    recipients those hold.

    Routing wrote a multicast's `recipients` when it planned it, but a device
    may leave its person before a retry: FCM calls its token dead (the hub
    detaches it from the profile during the attempt, and the delivery's list
    keeps it), a newer device takes its place (`evict_oldest`), or another person
    signs in on it. A person merged into another since holds what the survivor
    holds; one with no profile left holds nothing.
    """
    live_of = live_profile_ids(connection, sorted({delivery.profile_id for delivery in multicasts}))
    wanted = sorted({value for delivery in multicasts for value in recipients_of(delivery.target, delivery.content)})
    held: dict[str, set[str]] = {}
    for profile_id, value in connection.execute(
        select(identifiers.c.profile_id, identifiers.c.value).where(
            identifiers.c.profile_id.in_(sorted(set(live_of.values()))), identifiers.c.value.in_(wanted),
        )
    ):
        held.setdefault(profile_id, set()).add(value)
    lost = {
        delivery.delivery_id: set(recipients_of(delivery.target, delivery.content)).difference(
            held.get(live_of.get(delivery.profile_id, ""), ())
        )
        for delivery in multicasts
    }
    return {delivery_id: gone for delivery_id, gone in lost.items() if gone}


def handed_on(connection: Connection, profile_id: str, recipients: list[str]) -> set[str]:
    """The device tokens among `recipients` another profile holds now: a person signed in on the device since
    (`follows_last_login`), and a message to them would show on that person's screen."""
    return set(connection.execute(
        select(identifiers.c.value).where(
            identifiers.c.type.in_(sorted(TOKEN_TYPES)), identifiers.c.value.in_(recipients),
            identifiers.c.profile_id != profile_id,
        )
    ).scalars())
