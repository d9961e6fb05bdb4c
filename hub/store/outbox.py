"""The outbox: planned deliveries, their claims, and what their providers report of them.

The record of each send and the renewal of its lease while in flight are `hub.store.sends_in_flight`; the
delivery log reads them (`hub.store.delivery_log`); withdrawals and replays change what may go
(`hub.store.withdrawals`, `hub.store.delivery_replay`); provider text is fitted to the columns
(`hub.store.provider_text`)."""

from __future__ import annotations

from collections.abc import Collection, Container, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, literal, or_, select, update

from hub.model import Delivery, PlannedDelivery, ProviderStatus
from hub.pii import mask_text
from hub.store import precompiled, provider_text, sql
from hub.store.schema import UTCDateTime, attempts, deliveries

# Every status a delivery can have: a filter on any other shows nothing, which reads as "none of those" (an
# empty dead-letter queue for a typo of `dead`).
STATUSES = ("pending", "retrying", "sent", "delivered", "failed", "dead")
DUE_STATUSES = ("pending", "retrying")
# Deliveries that have reached no one yet and still may: due, held (pending until later) or dead (a replay).
UNSENT_STATUSES = (*DUE_STATUSES, "dead")
# Statuses only a provider's callback sets; later, out-of-order callbacks never undo them.
SETTLED_STATUSES = ("delivered", "failed")
# How far along its way each in-transit provider status (Twilio's MessageStatus) says a message is. Providers
# post callbacks out of order (Twilio: "order by the status, not by arrival"), so a late `queued` must not
# replace `sent`; a status not ranked here replaces any.
IN_TRANSIT_RANKS = {"accepted": 0, "scheduled": 0, "queued": 0, "sending": 1, "sent": 2}
# What forgetting a person (`hub.store.forget`) leaves of each delivery's recipient: such a delivery is never
# sent again (`hub.store.delivery_replay`), and the attempt of a send in flight meanwhile is logged blank.
FORGOTTEN_TARGET = "(forgotten)"


_PLAN = sql.NewRows(deliveries.c.delivery_id)  # every pipeline batch and timer set that plans


def plan(connection: Connection, planned: Sequence[PlannedDelivery], now: datetime) -> int:
    rows = [
        {
            "delivery_id": item.delivery_id,
            "decision_id": item.decision_id,
            "profile_id": item.profile_id,
            "channel": item.channel,
            "destination_id": item.destination_id,
            "target": item.target,
            "content": item.content,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": item.not_before or now,
            "first_due_at": item.not_before or now,
        }
        for item in planned
    ]
    return len(_PLAN(connection, rows))

# The columns of a `Delivery` after its id, in its fields' order: rows are unpacked into it by position.
DELIVERY_COLUMNS = (
    deliveries.c.destination_id, deliveries.c.channel, deliveries.c.target, deliveries.c.content,
    deliveries.c.attempts, deliveries.c.created_at, deliveries.c.profile_id,
)


_CLAIMED_COLUMNS = (*DELIVERY_COLUMNS, deliveries.c.retry_from_attempt, deliveries.c.retry_from, deliveries.c.first_due_at)


def _waiting(skipping: int) -> ColumnElement[bool]:
    """Deliveries waiting for a send, but those of `skipping` destinations, one bind parameter each; the statuses
    as literals, as `Precompiled` cannot run an expanding IN."""
    due = deliveries.c.status.in_([literal(status) for status in DUE_STATUSES])
    if skipping:
        due = and_(due, deliveries.c.destination_id.not_in(precompiled.placeholders(skipping, "skip_")))
    return due


@lru_cache(maxsize=16)
def _claim_due(skipping: int) -> sql.Claim:
    """Each delivery worker batch's claim (and each of its looks that find nothing), passing over the deliveries
    of `skipping` destinations."""
    return sql.due_claim(deliveries.c.delivery_id, _CLAIMED_COLUMNS, _waiting(skipping), deliveries.c.next_attempt_at)


# A claim of one delivery by its id, if it is still due and no live worker holds it (`claim_one`).
_CLAIM_ONE = sql.due_claim(
    deliveries.c.delivery_id, _CLAIMED_COLUMNS, and_(_waiting(0), deliveries.c.delivery_id == bindparam("p_id")),
    deliveries.c.next_attempt_at,
)


def claim_due(
    connection: Connection, limit: int, now: datetime, lease: timedelta, skip_destinations: Collection[str] = (),
    held: Container[str] = frozenset(),
) -> list[Delivery]:
    """Claim deliveries whose time has come and which no live worker holds, but none of `skip_destinations`
    (those at their limit of sends in flight: their deliveries wait, due, for the next claim).

    None of `held` either: the caller's own sends in flight that are due
    again all the same (withdrawn and replayed meanwhile, which left no lease
    to renew; a worker stalled past its lease). Sending one again beside the
    first reached the person twice. It is left out here, not in the
    statement, which then stays one per count of skipped destinations; the
    claim has just leased it again, to the caller, who does not know that
    lease: the record of its send in flight leaves the row to it (as to any
    lease not the recorder's, `sends_in_flight.record_attempts`), and it goes, as replayed,
    once that lease runs out.
    """
    skipped = precompiled.padded(sorted(skip_destinations))  # a statement per power of two, as `InLists`
    claim = _claim_due(len(skipped))
    rows = claim(connection, limit, p_now=now, p_until=now + lease, **precompiled.numbered(skipped, "skip_"))
    return [Delivery(*row) for row in rows if row[0] not in held]


def due_ids(
    connection: Connection, limit: int, now: datetime, skip_destinations: Collection[str] = (),
    held: Container[str] = frozenset(),
) -> list[str]:
    """The ids of the deliveries `claim_due` would take, read and not leased: only the key is read, so a row
    whose other columns cannot be read (a payload or a time written by hand) is among them, for the caller to
    claim one by one (`claim_one`) and set aside (`set_aside`). Not a hot path: only after a claim failed."""
    skipped = sorted(skip_destinations)
    ready = sql.due_ready(_waiting(len(skipped)), deliveries.c.next_attempt_at, now)
    ids = connection.execute(
        select(deliveries.c.delivery_id).where(ready).order_by(deliveries.c.next_attempt_at).limit(limit),
        precompiled.numbered(skipped, "skip_"),
    ).scalars()
    return [delivery_id for delivery_id in ids if delivery_id not in held]


def claim_one(connection: Connection, delivery_id: str, now: datetime, lease: timedelta) -> Delivery | None:
    """`claim_due` of one delivery, by its id; None if it is no longer due, or another worker holds it."""
    rows = _CLAIM_ONE(connection, 1, p_now=now, p_until=now + lease, p_id=delivery_id)
    return Delivery(*rows[0]) if rows else None


def set_aside(connection: Connection, delivery_id: str, now: datetime, reason: str) -> None:
    """Dead-letter a claimed delivery the hub cannot send as it is stored, `reason` as its last error: left due,
    it failed every claim that took it, and held back every delivery due after it. Replayable once its row is
    mended."""
    connection.execute(
        update(deliveries).where(deliveries.c.delivery_id == delivery_id)
        .values(status="dead", last_error=reason, claimed_until=None, updated_at=now)
    )


def defer(
    connection: Connection, delivery_id: str, until: datetime, *, first_due: bool = False, lease: datetime | None = None
) -> None:
    """Put a claimed delivery back untouched, due at `until` (circuit open, rate limit): no attempt is spent.

    `first_due`: it was not yet due to go after all (quiet hours hold a first
    send at its claim), so it is first due at `until`: its maximum age and the
    daily cap count from then (`Delivery.retry_age`, `going_since`), not from
    the due time it was claimed at, hours before it may go.
    `lease`: the lease the caller set at its claim (None: in the claim's own
    transaction, where it is surely the caller's). If the row has another
    since, the caller stalled past it and another worker is sending the
    delivery: it is left to that worker, as putting it back released it.
    """
    values: dict[str, datetime | None] = {"next_attempt_at": until, "claimed_until": None}
    if first_due:
        values["first_due_at"] = until
    held = deliveries.c.delivery_id == delivery_id
    if lease is not None:
        held = and_(held, holds_row(literal(lease, UTCDateTime)))
    connection.execute(update(deliveries).where(held).values(**values))


def holds_row(lease: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether a worker that set `lease` at its claim may still write the row's state: the row has that very lease,
    or none (a replay or a withdrawal left none). A worker that stalled past its lease (a paused VM) and wrote late
    released the lease of the worker now sending the delivery, and a third copy went (`hub.store.sends_in_flight`)."""
    return or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until == lease)




def target_of(connection: Connection, delivery_id: str) -> str | None:
    """The address a delivery was sent to."""
    return connection.execute(select(deliveries.c.target).where(deliveries.c.delivery_id == delivery_id)).scalar()


def apply_provider_status(
    connection: Connection, destination_id: str, report: ProviderStatus, now: datetime
) -> dict[str, Any] | None:
    """Record a provider's status for the delivery it sent as `report.provider_message_id`.

    Returns the delivery's id and `DELIVERY_COLUMNS` (its fallback is planned from them), status and
    provider status, and `settled_now`: whether this report settled it (a final status on a delivery that had none); None when no delivery of this
    destination has that provider id. A report for a settled delivery changes nothing, nor does an
    in-transit one behind the status already recorded (`_behind`).
    """
    report = provider_text.storable_report(report)  # as recorded, and as its column takes its status
    row = connection.execute(
        select(deliveries.c.delivery_id, *DELIVERY_COLUMNS, deliveries.c.status, deliveries.c.provider_status)
        .where(deliveries.c.destination_id == destination_id, deliveries.c.provider_message_id == report.provider_message_id)
        .with_for_update()  # two callbacks for one message at once: the second reads what the first settled
    ).first()
    if row is None:
        return None
    if row.status not in SETTLED_STATUSES and not _behind(report, row.provider_status):
        values: dict[str, Any] = {"provider_status": report.provider_status, "updated_at": now}
        if report.final_status:
            values["status"] = report.final_status
        if report.error:
            values["last_error"] = mask_text(report.error)
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == row.delivery_id).values(**values))
    return {**row._mapping, "settled_now": row.status not in SETTLED_STATUSES and report.final_status is not None}


def _behind(report: ProviderStatus, recorded: str | None) -> bool:
    """Whether `report` is an in-transit status no further along than the one recorded (`IN_TRANSIT_RANKS`): a
    late callback, or a repeat."""
    if report.final_status is not None or report.provider_status not in IN_TRANSIT_RANKS or recorded not in IN_TRANSIT_RANKS:
        return False
    return IN_TRANSIT_RANKS[report.provider_status] <= IN_TRANSIT_RANKS[recorded]


def last_attempt_at(connection: Connection, delivery_id: str) -> datetime | None:
    """When the delivery's last attempt started: when the provider took the message it reports on."""
    return connection.execute(select(func.max(attempts.c.started_at)).where(attempts.c.delivery_id == delivery_id)).scalar()


def unfinished(connection: Connection, now: datetime) -> int:
    """Deliveries being retried, or due for their first attempt; those held back by a delay or quiet hours
    (pending until a later time) are not work yet."""
    query = select(func.count()).select_from(deliveries).where(
        or_(deliveries.c.status == "retrying", (deliveries.c.status == "pending") & (deliveries.c.next_attempt_at <= now))
    )
    return connection.execute(query).scalar_one()


# When a message goes, as the daily cap counts it: when a provider took it, which for a retried or replayed one
# is hours after it was first due; not taken yet (or sent before i22), when it was first due (planned before
# i12: created_at). Columns of the row, so the cap's read stays one statement on the profiles' index.
_GOES_AT = func.coalesce(deliveries.c.sent_at, deliveries.c.first_due_at, deliveries.c.created_at, type_=UTCDateTime)
# Attempt outcomes after which a message may be with the person: the provider took it, or the call timed out or
# failed with a 5xx after it may have (`dead` deliveries end so, and count).
_MAY_HAVE_ARRIVED = ("sent", "retryable")
# A failed delivery whose last attempt may have arrived (a send in flight as it was withdrawn; retries cut short
# by a withdrawal), with no provider report that it was lost: a failed delivery carries a provider status only
# when that report failed it (Twilio `undelivered`), as a settled one takes no later report. Left out: one
# failed unsent (consent revoked since, too old to send) and one the provider refused for good (an invalid or
# unsubscribed number, push tokens all dead, a hard bounce: its last attempt `permanent`), which reached nobody.
_FAILED_BUT_MAY_HAVE_ARRIVED = and_(
    deliveries.c.provider_status.is_(None),
    select(attempts.c.id).where(
        attempts.c.delivery_id == deliveries.c.delivery_id, attempts.c.attempt_no == deliveries.c.attempts,
        attempts.c.outcome.in_([literal(outcome) for outcome in _MAY_HAVE_ARRIVED]),  # literals: `Precompiled`
    ).exists(),
)
# A delivery that went, may still go, or may have reached its person: any but a failed one, and a failed one
# whose last attempt may have arrived (what the daily cap counts; a replay after a fallback, `delivery_replay`).
MAY_HAVE_REACHED = or_(deliveries.c.status != "failed", _FAILED_BUT_MAY_HAVE_ARRIVED)
_GOING_SINCE = precompiled.InLists(  # the pipeline asks it for every decision it routes, the timer engine per set
    lambda profiles, channels: select(deliveries.c.profile_id, _GOES_AT).where(
        deliveries.c.profile_id.in_(profiles), deliveries.c.channel.in_(channels),
        _GOES_AT > bindparam("since", type_=UTCDateTime),
        MAY_HAVE_REACHED,
    )
)


def going_since(
    connection: Connection, profile_ids: Collection[str], channels: Sequence[str], since: datetime
) -> dict[str, list[datetime]]:
    """When each profile's deliveries on these channels go (the end of their delay or quiet hours) or went (when
    a provider took them, `_GOES_AT`), from `since` on, those that failed having reached nobody left out (profiles with none left out too): what
    the daily cap counts, for a set of profiles in one statement.

    A provider's refusal is recorded before the delivery's fallback is
    planned, in the same transaction (`hub.delivery_record`), so the fallback
    finds the refused message not counted.
    """
    going: dict[str, list[datetime]] = {}
    for profile_id, goes_at in _GOING_SINCE.execute(connection, profile_ids, channels, since=since):
        going.setdefault(profile_id, []).append(goes_at)
    return going
