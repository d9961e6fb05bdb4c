"""Sending a dead or failed delivery again (the dead-letter queue's replay), and what may never go again."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from hub.store import withdrawals
from hub.store.schema import deliveries

REPLAYABLE_STATUSES = ("dead", "failed")
# What forgetting a person (`hub.store.forget`) leaves of each delivery's recipient; such a delivery is
# never sent again, and `replay` answers FORGOTTEN for it.
FORGOTTEN_TARGET = "(forgotten)"
FORGOTTEN = "forgotten"
MISADDRESSED = "misaddressed"  # withdrawn in an unmerge (`withdrawals.WITHDRAWN_IN_UNMERGE`)
HANDED_ON = "handed_on"  # a push to devices that are all another person's now


def why_not_replayed(delivery_id: str, previous: str) -> str:
    """What the API and the CLI answer when `replay` returned `previous`, not a replayable status."""
    if previous == FORGOTTEN:
        return f"delivery {delivery_id!r} was to a person since forgotten (erased on request); it is never sent again"
    if previous == MISADDRESSED:
        return (f"delivery {delivery_id!r} was planned while two people were one profile and an unmerge withdrew it; "
                "it would reach, or carry, the wrong person, so it is never sent again")
    if previous == HANDED_ON:
        return (f"delivery {delivery_id!r} was a push to a device another person has signed in on since; it would "
                "show on their screen, so it is never sent again")
    return f"delivery {delivery_id!r} is {previous}; only {' or '.join(REPLAYABLE_STATUSES)} ones are replayed"


def replay(connection: Connection, delivery_id: str, now: datetime) -> str | None:
    """Queue a dead or failed delivery again with a fresh retry budget.

    Returns the status the delivery had (the caller tells "replayed" from "not
    replayable" by it), FORGOTTEN for one whose person was erased on request
    (it has no recipient left, and must reach no one), MISADDRESSED for one an
    unmerge withdrew, HANDED_ON for a push to devices that are all another
    person's now, or None when there is no such delivery. Attempt numbers keep
    counting, so the log shows the replayed attempts after the old ones.

    A push to a device another person has signed in on since goes to the
    person's other devices only, or nowhere (HANDED_ON), whatever its status:
    at the move `drop_recipient` takes the token out of messages not yet sent
    (dead ones too), but one that failed before (FCM refused it, consent
    lapsed) kept it, and a replay of it reached the other person's screen.

    The provider's id and status of the last message go (its attempt keeps
    the id): a late repeat of that message's callback (Twilio retrying it, or
    a captured one posted again) found the replayed delivery by it and
    settled it, unsent or failing to send. The delivery takes the id of the
    message its replay sends.
    """
    row = connection.execute(
        select(
            deliveries.c.status, deliveries.c.attempts, deliveries.c.target, deliveries.c.last_error,
            deliveries.c.profile_id, deliveries.c.content,
        ).where(deliveries.c.delivery_id == delivery_id)
    ).first()
    if row is None:
        return None
    if row.target == FORGOTTEN_TARGET:
        return FORGOTTEN
    if row.status == "failed" and row.last_error in (withdrawals.WITHDRAWN_IN_UNMERGE, *withdrawals.WITHDRAWN_IN_UNMERGE_BEFORE):
        return MISADDRESSED
    if row.status == "failed" and row.last_error == withdrawals.WITHDRAWN_DEVICE_HANDED_ON:
        return HANDED_ON
    if row.status not in REPLAYABLE_STATUSES:
        return row.status
    readdressed: dict[str, Any] = {}
    if handed_on := withdrawals.handed_on(connection, row.profile_id, withdrawals.recipients_of(row.target, row.content)):
        narrowed = withdrawals.without_recipients(row.target, row.content, handed_on)
        if narrowed is None:
            return HANDED_ON
        readdressed = narrowed
    connection.execute(
        update(deliveries)
        .where(deliveries.c.delivery_id == delivery_id)
        .values(
            status="pending", next_attempt_at=now, claimed_until=None, updated_at=now, retry_from_attempt=row.attempts,
            retry_from=now, provider_message_id=None, provider_status=None, **readdressed,
        )
    )
    return row.status


def ids_with_status(connection: Connection, status: str, destination_id: str | None = None) -> list[str]:
    """Delivery ids in `status`, oldest first, optionally of one destination (bulk replay)."""
    query = select(deliveries.c.delivery_id).where(deliveries.c.status == status).order_by(deliveries.c.created_at)
    if destination_id:
        query = query.where(deliveries.c.destination_id == destination_id)
    return list(connection.execute(query).scalars())
