"""The outbox: planned deliveries, their claims and leases, and the record of their attempts.

The delivery log reads them (`hub.store.delivery_log`); withdrawals and replays change what may go
(`hub.store.withdrawals`, `hub.store.delivery_replay`); provider text is fitted to the columns
(`hub.store.provider_text`)."""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, case, func, insert, literal, null, or_, select, update

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


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call to a provider, as the delivery log shows it (already masked)."""

    started_at: datetime
    duration_ms: float
    outcome: str
    provider_message_id: str | None
    error_class: str | None
    error_message: str | None
    request_summary: dict[str, Any]
    response_summary: dict[str, Any]


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
    lease not the recorder's, `record_attempts`), and it goes, as replayed,
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


# The lease a worker set on a row (`b_lease`: `claimed_until` as its claim or last renewal wrote it; NULL for a
# caller that holds none, which takes whatever lease the row has). Times match exactly on both databases:
# SQLite keeps the text with all six digits of microseconds, PostgreSQL's timestamptz microseconds.
_LEASE = bindparam("b_lease", type_=UTCDateTime)
_STILL_LEASED = deliveries.c.claimed_until == func.coalesce(_LEASE, deliveries.c.claimed_until)
# The row's state is the record's to write: its lease is still the recording worker's, or nobody's (a replay or a
# withdrawal left none). A worker that stalled past its lease (a paused VM) and records late finds another
# worker's lease, whose send is in flight: releasing it made the row due, and a third copy went.
_HOLDS_ROW = or_(deliveries.c.claimed_until.is_(None), _STILL_LEASED)
_EXTEND_LEASE = precompiled.Precompiled(  # every record of a delivery worker with sends in flight half a lease on
    update(deliveries)
    .where(deliveries.c.delivery_id == bindparam("b_delivery_id"), _STILL_LEASED)
    .values(claimed_until=bindparam("b_until", type_=UTCDateTime))
)


def extend_leases(connection: Connection, leases: Mapping[str, datetime | None], until: datetime) -> None:
    """Keep the deliveries a worker is still sending claimed until `until`, each only if it still has the lease
    the worker set (`leases`, by delivery id): a send that outlived its lease was claimed again, by the same
    worker or another, and sent twice; and a stalled worker that renewed another's lease took it back, and
    then released it with its record. Rows no longer claimed (withdrawn meanwhile) stay so. None given,
    nothing is written."""
    if leases:
        _EXTEND_LEASE.execute(connection, [
            {"b_delivery_id": delivery_id, "b_lease": lease, "b_until": until} for delivery_id, lease in leases.items()
        ])


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
        held = and_(held, or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until == lease))
    connection.execute(update(deliveries).where(held).values(**values))


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """A delivery's attempt and the status it leads to, as `record_attempts` writes them."""

    delivery: Delivery
    attempt: AttemptRecord
    status: str
    next_attempt_at: datetime | None  # None keeps the current due time (the delivery is finished)
    lease: datetime | None = None  # the lease the recording worker set on the row; None: the caller holds none


_ATTEMPT_FIELDS = tuple(field.name for field in fields(AttemptRecord))
# Both statements of a batch's record are `Precompiled`: compiled once, then each batch is one executemany of
# the driver's own SQL, without SQLAlchemy's per-execution cache-key walk and parameter building (`inline`: no
# RETURNING of the attempt ids on PostgreSQL, which nothing reads).
_INSERT_ATTEMPTS = precompiled.Precompiled(insert(attempts).inline(), ["delivery_id", "attempt_no", *_ATTEMPT_FIELDS])
# The batch's rows as their record left them: each attempt's number (the row's count, which the record has just
# raised), and whether its person was forgotten while the send was in flight (`hub.store.forget`).
_RECORDED = precompiled.InLists(
    lambda delivery_ids: select(deliveries.c.delivery_id, deliveries.c.attempts, deliveries.c.target)
    .where(deliveries.c.delivery_id.in_(delivery_ids))
)
# What forget leaves of an attempt: what it said of the request and the answer is the person's, masked or not
# ("+1******0142").
_FORGOTTEN_ATTEMPT: dict[str, Any] = {"request_summary": {}, "response_summary": {}, "error_message": None}
# A delivery withdrawn while its send was in flight (its person forgotten, its address gone in an unmerge)
# keeps its status and reason: a retry would go to what was withdrawn. So does one whose lease another worker
# holds now (`_HOLDS_ROW`): its state is that worker's to write. The attempt is still counted and logged, and
# what it sent noted (provider id, when sent), as the message went all the same.
_STILL_DUE = or_(*(deliveries.c.status == literal(status) for status in DUE_STATUSES))  # literals: `Precompiled`
_SETS_STATUS = and_(_STILL_DUE, _HOLDS_ROW)
_FINISH_ATTEMPT = precompiled.Precompiled(
    update(deliveries)
    .where(deliveries.c.delivery_id == bindparam("b_delivery_id"))
    .values(
        status=case((_SETS_STATUS, bindparam("b_status")), else_=deliveries.c.status),
        # Counted in the row: two workers that sent one delivery (one stalled past its lease) each wrote the
        # count they had claimed plus one, and both sends were logged as one attempt, one short of the budget.
        attempts=deliveries.c.attempts + 1,
        updated_at=bindparam("b_updated_at"),
        claimed_until=case((_HOLDS_ROW, null()), else_=deliveries.c.claimed_until),
        last_error=case((_SETS_STATUS, bindparam("b_last_error")), else_=deliveries.c.last_error),
        provider_message_id=func.coalesce(bindparam("b_provider_message_id"), deliveries.c.provider_message_id),
        next_attempt_at=case(
            (_HOLDS_ROW, func.coalesce(bindparam("b_next_attempt_at", type_=UTCDateTime), deliveries.c.next_attempt_at)),
            else_=deliveries.c.next_attempt_at,
        ),
        sent_at=func.coalesce(bindparam("b_sent_at", type_=UTCDateTime), deliveries.c.sent_at),
    )
)


def record_attempts(connection: Connection, results: Sequence[AttemptResult]) -> None:
    """Log the attempts and move each delivery to its new status, in the caller's transaction; what the
    providers said is `_storable` first.

    A delivery whose lease another worker holds now keeps its status, lease
    and due time (`_HOLDS_ROW`); its attempt is still logged and counted.
    Each attempt's number is the row's count after the record raised it, so
    two workers' sends of one delivery are attempts 1 and 2.
    An attempt whose delivery's person was forgotten while it was in flight
    is logged as forget leaves the person's others (`_FORGOTTEN_ATTEMPT`):
    written whole after the forget, it kept their masked number and the
    provider's answer for good. The deliveries' rows are written first, so
    on PostgreSQL a forget on another node that holds them makes this wait
    for its commit and the look after it sees the forgotten target; once
    this holds them, a forget waits in turn, and its wipe finds these
    attempts. That look, which also reads the attempts' numbers, is one
    primary-key read per batch: SQLite took it at half the cost of inserting
    the attempts from their deliveries' rows.
    """
    if not results:
        return
    stored = [(result, _storable(result.attempt)) for result in results]
    _FINISH_ATTEMPT.execute(connection, [
        {
            "b_delivery_id": result.delivery.delivery_id,
            "b_status": result.status,
            "b_lease": result.lease,
            "b_updated_at": result.attempt.started_at,
            "b_last_error": values["error_message"],
            "b_provider_message_id": values["provider_message_id"],
            "b_next_attempt_at": result.next_attempt_at,
            "b_sent_at": _sent_at(result.attempt),
        }
        for result, values in stored
    ])
    recorded = {row[0]: row[1:] for row in _RECORDED.execute(connection, [result.delivery.delivery_id for result in results])}
    _INSERT_ATTEMPTS.execute(connection, [
        _attempt_row(result.delivery.delivery_id, values, *recorded[result.delivery.delivery_id])
        for result, values in stored
    ])


def _attempt_row(delivery_id: str, values: dict[str, Any], attempt_no: int, target: str) -> dict[str, Any]:
    """The attempt's row in the log, numbered as its delivery's row counts it, blank where forget has been."""
    return {
        "delivery_id": delivery_id, "attempt_no": attempt_no, **values,
        **(_FORGOTTEN_ATTEMPT if target == FORGOTTEN_TARGET else {}),
    }


def _sent_at(attempt: AttemptRecord) -> datetime | None:
    """When the provider took the message, if this attempt's did: the daily cap counts the message then
    (`_GOES_AT`), kept even when a withdrawal left its status alone, as it went all the same; None keeps the
    time of an earlier send."""
    return attempt.started_at if attempt.outcome == "sent" else None


def _storable(attempt: AttemptRecord) -> dict[str, Any]:
    """The attempt's columns, its provider's text `provider_text.fitted`: on PostgreSQL one value a column refuses failed the
    record of the whole batch, and every message of it was sent again each time the lease ran out."""
    values = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
    for name, width in provider_text.ATTEMPT_WIDTHS.items():
        values[name] = provider_text.fitted(values[name], width)
    return values


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
