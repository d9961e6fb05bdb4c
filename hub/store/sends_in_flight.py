"""What a delivery worker writes of the sends it has in flight: their leases renewed, and the attempt each made,
with the status it leads to.

Apart from the outbox (`hub.store.outbox`), which plans deliveries and hands them out, because every write here
is fenced by the lease the worker set at its claim (`_HOLDS_ROW`): a worker that stalled past its lease must not
release or overwrite the row of the worker now sending it. Both statements run for every delivery batch, so they
are `Precompiled`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, insert, literal, null, or_, select, update

from hub.model import Delivery
from hub.store import precompiled, provider_text
from hub.store.outbox import DUE_STATUSES, FORGOTTEN_TARGET, holds_row
from hub.store.schema import UTCDateTime, attempts, deliveries


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



# The lease a worker set on a row (`b_lease`: `claimed_until` as its claim or last renewal wrote it; NULL for a
# caller that holds none, which takes whatever lease the row has). Times match exactly on both databases:
# SQLite keeps the text with all six digits of microseconds, PostgreSQL's timestamptz microseconds.
_LEASE = bindparam("b_lease", type_=UTCDateTime)
_STILL_LEASED = deliveries.c.claimed_until == func.coalesce(_LEASE, deliveries.c.claimed_until)
# The row's state is the record's to write: its lease is still the recording worker's, or nobody's (a replay or a
# withdrawal left none). A worker that stalled past its lease (a paused VM) and records late finds another
# worker's lease, whose send is in flight: releasing it made the row due, and a third copy went.
_HOLDS_ROW = holds_row(func.coalesce(_LEASE, deliveries.c.claimed_until))
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
    (`outbox.going_since`), kept even when a withdrawal left its status alone, as it went all the same; None keeps the
    time of an earlier send."""
    return attempt.started_at if attempt.outcome == "sent" else None


def _storable(attempt: AttemptRecord) -> dict[str, Any]:
    """The attempt's columns, its provider's text `provider_text.fitted`: on PostgreSQL one value a column refuses failed the
    record of the whole batch, and every message of it was sent again each time the lease ran out."""
    values = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
    for name, width in provider_text.ATTEMPT_WIDTHS.items():
        values[name] = provider_text.fitted(values[name], width)
    return values
