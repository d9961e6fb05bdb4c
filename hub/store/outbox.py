"""The outbox: planned deliveries, their attempts, and the delivery log built from them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Container, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, overload

from sqlalchemy import Column, Connection, and_, bindparam, case, desc, func, insert, literal, null, or_, select, update

from hub.model import Delivery, Identifier, PlannedDelivery, ProviderStatus
from hub.pii import TOKEN_TYPES, mask_recipient, mask_text, mask_value
from hub.store import precompiled, sql
from hub.store.schema import UTCDateTime, attempts, deliveries, held_reports, identifiers

# Every status a delivery can have: a filter on any other shows nothing, which reads as "none of those" (an
# empty dead-letter queue for a typo of `dead`).
STATUSES = ("pending", "retrying", "sent", "delivered", "failed", "dead")
DUE_STATUSES = ("pending", "retrying")
REPLAYABLE_STATUSES = ("dead", "failed")
# Deliveries that have reached no one yet and still may: due, held (pending until later) or dead (a replay).
UNSENT_STATUSES = (*DUE_STATUSES, "dead")
# What forgetting a person (`hub.store.forget`) leaves of each delivery's recipient; such a delivery is
# never sent again, and `replay` answers FORGOTTEN for it.
FORGOTTEN_TARGET = "(forgotten)"
FORGOTTEN = "forgotten"
# What an unmerge (`hub.store.identity_repair`) leaves as the last error of the messages it withdraws: planned
# for, or carrying, the other person while the two were one profile. `replay` answers MISADDRESSED for them.
WITHDRAWN_IN_UNMERGE = "not sent: planned for the other person while two people were one profile (unmerged since)"
# The same, as withdrawals before 2026-12-06 were worded.
_WITHDRAWN_IN_UNMERGE_BEFORE = ("not sent: recipient left the profile in an unmerge",)
MISADDRESSED = "misaddressed"
# The last error of a push withdrawn because its device's token moved to another person who signed in on it
# (`hub.identity`'s `follows_last_login`); `replay` answers HANDED_ON for them.
WITHDRAWN_DEVICE_HANDED_ON = "not sent: another person has signed in on the device since (its push token is theirs now)"
HANDED_ON = "handed_on"
# Statuses only a provider's callback sets; later, out-of-order callbacks never undo them.
SETTLED_STATUSES = ("delivered", "failed")
# What a delivery's channel and target name (`Router.recipient`): how the delivery log masks its recipients.
RecipientOf = Callable[[str, str], Identifier | None]


def unrouted(channel: str, target: str) -> Identifier | None:
    """A `RecipientOf` that knows no routes (tests, tools without mappings): every target is masked as text."""
    return None


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


@lru_cache(maxsize=16)
def _claim_due(skipping: int) -> sql.Claim:
    """Each delivery worker batch's claim (and each of its looks that find nothing), passing over the deliveries
    of `skipping` destinations, one bind parameter each; the statuses as literals, as `Precompiled` cannot run
    an expanding IN."""
    due = deliveries.c.status.in_([literal(status) for status in DUE_STATUSES])
    if skipping:
        due = and_(due, deliveries.c.destination_id.not_in(precompiled.placeholders(skipping, "skip_")))
    return sql.due_claim(
        deliveries.c.delivery_id,
        (
            deliveries.c.destination_id, deliveries.c.channel, deliveries.c.target, deliveries.c.content,
            deliveries.c.attempts, deliveries.c.created_at, deliveries.c.profile_id, deliveries.c.retry_from_attempt,
            deliveries.c.retry_from, deliveries.c.first_due_at,
        ),
        due, deliveries.c.next_attempt_at,
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
    claim has just leased it again, to the caller, whose it is.
    """
    skipped = precompiled.padded(sorted(skip_destinations))  # a statement per power of two, as `InLists`
    claim = _claim_due(len(skipped))
    rows = claim(connection, limit, p_now=now, p_until=now + lease, **precompiled.numbered(skipped, "skip_"))
    return [Delivery(*row) for row in rows if row[0] not in held]


_EXTEND_LEASES = precompiled.InLists(  # every record of a delivery worker with sends in flight
    lambda delivery_ids: update(deliveries)
    .where(deliveries.c.delivery_id.in_(delivery_ids), deliveries.c.claimed_until.is_not(None))
    .values(claimed_until=bindparam("until", type_=UTCDateTime))
)


def extend_leases(connection: Connection, delivery_ids: Collection[str], until: datetime) -> None:
    """Keep the deliveries a worker is still sending claimed until `until`: a send that outlived its lease was
    claimed again, by the same worker or another, and sent twice. Rows no longer claimed (withdrawn meanwhile)
    stay so. None given, nothing is written."""
    _EXTEND_LEASES.execute(connection, delivery_ids, until=until)


def withdraw(connection: Connection, delivery_ids: Sequence[str], now: datetime, reason: str) -> None:
    """Settle deliveries as failed without an attempt (`reason` as their last error): never sent, and never
    retried. Claimed ones (the claim-time checks), or any not yet sent (forget, an unmerge): one in flight
    meanwhile keeps this status when its attempt is recorded. None given, nothing is written."""
    if not delivery_ids:
        return
    connection.execute(
        update(deliveries).where(deliveries.c.delivery_id.in_(delivery_ids))
        .values(status="failed", last_error=reason, claimed_until=None, updated_at=now)
    )


def drop_recipient(connection: Connection, profile_id: str, value: str, now: datetime, reason: str) -> int:
    """Take `value` out of the profile's messages not yet sent; returns how many it was in.

    A message to it alone is withdrawn (`reason` its last error); one to
    several (a multicast's `recipients`: every push token of the person) goes
    on to the others.
    """
    unsent = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.target, deliveries.c.content)
        .where(deliveries.c.profile_id == profile_id, deliveries.c.status.in_(UNSENT_STATUSES))
    ).all()
    alone, shared = [], 0
    for delivery_id, target, content in unsent:
        if value not in _recipients(target, content):
            continue
        narrowed = _without(target, content, {value})
        if narrowed is None:
            alone.append(delivery_id)
            continue
        shared += 1
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(**narrowed, updated_at=now))
    withdraw(connection, alone, now, reason)
    return len(alone) + shared


def _recipients(target: str, content: dict[str, Any]) -> list[str]:
    """Whom a delivery goes to: its target, or a multicast's `recipients` (every device of the person)."""
    return list(content.get("recipients") or [target])


def _without(target: str, content: dict[str, Any], gone: Container[str]) -> dict[str, Any] | None:
    """A delivery's target and content with the `gone` recipients taken out; None when none is left."""
    kept = [recipient for recipient in _recipients(target, content) if recipient not in gone]
    if not kept:
        return None
    return {"target": kept[0] if target in gone else target, "content": {**content, "recipients": kept}}


def _handed_on(connection: Connection, profile_id: str, recipients: list[str]) -> set[str]:
    """The device tokens among `recipients` another profile holds now: a person signed in on the device since
    (`follows_last_login`), and a message to them would show on that person's screen."""
    return set(connection.execute(
        select(identifiers.c.value).where(
            identifiers.c.type.in_(sorted(TOKEN_TYPES)), identifiers.c.value.in_(recipients),
            identifiers.c.profile_id != profile_id,
        )
    ).scalars())


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


def defer(connection: Connection, delivery_id: str, until: datetime) -> None:
    """Put a claimed delivery back untouched, due at `until` (circuit open, rate limit): no attempt is spent."""
    connection.execute(
        update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(next_attempt_at=until, claimed_until=None)
    )

@dataclass(frozen=True, slots=True)
class AttemptResult:
    """A delivery's attempt and the status it leads to, as `record_attempts` writes them."""

    delivery: Delivery
    attempt: AttemptRecord
    status: str
    next_attempt_at: datetime | None  # None keeps the current due time (the delivery is finished)


_ATTEMPT_FIELDS = tuple(field.name for field in fields(AttemptRecord))
# Both statements of a batch's record are `Precompiled`: compiled once, then each batch is one executemany of
# the driver's own SQL, without SQLAlchemy's per-execution cache-key walk and parameter building (`inline`: no
# RETURNING of the attempt ids on PostgreSQL, which nothing reads).
_INSERT_ATTEMPTS = precompiled.Precompiled(insert(attempts).inline(), ["delivery_id", "attempt_no", *_ATTEMPT_FIELDS])
# A delivery withdrawn while its send was in flight (its person forgotten, its address gone in an unmerge)
# keeps its status and reason: a retry would go to what was withdrawn. The attempt is still counted and logged.
_STILL_DUE = or_(*(deliveries.c.status == literal(status) for status in DUE_STATUSES))  # literals: `Precompiled`
_FINISH_ATTEMPT = precompiled.Precompiled(
    update(deliveries)
    .where(deliveries.c.delivery_id == bindparam("b_delivery_id"))
    .values(
        status=case((_STILL_DUE, bindparam("b_status")), else_=deliveries.c.status),
        attempts=bindparam("b_attempts"),
        updated_at=bindparam("b_updated_at"),
        claimed_until=null(),
        last_error=case((_STILL_DUE, bindparam("b_last_error")), else_=deliveries.c.last_error),
        provider_message_id=func.coalesce(bindparam("b_provider_message_id"), deliveries.c.provider_message_id),
        next_attempt_at=func.coalesce(bindparam("b_next_attempt_at", type_=UTCDateTime), deliveries.c.next_attempt_at),
    )
)


def record_attempts(connection: Connection, results: Sequence[AttemptResult]) -> None:
    """Log the attempts and move each delivery to its new status, in the caller's transaction; what the
    providers said is `_storable` first."""
    if not results:
        return
    stored = [(result, _storable(result.attempt)) for result in results]
    _INSERT_ATTEMPTS.execute(connection, [
        {"delivery_id": result.delivery.delivery_id, "attempt_no": result.delivery.attempts + 1, **values}
        for result, values in stored
    ])
    _FINISH_ATTEMPT.execute(connection, [
        {
            "b_delivery_id": result.delivery.delivery_id,
            "b_status": result.status,
            "b_attempts": result.delivery.attempts + 1,
            "b_updated_at": result.attempt.started_at,
            "b_last_error": values["error_message"],
            "b_provider_message_id": values["provider_message_id"],
            "b_next_attempt_at": result.next_attempt_at,
        }
        for result, values in stored
    ])


def _width(*columns: Column[Any]) -> int | None:
    """The most characters every one of `columns` takes (None: any number, a TEXT column)."""
    widths = [width for column in columns if (width := getattr(column.type, "length", None))]
    return min(widths) if widths else None


# The attempt's text written from what a provider said, and the width of the columns it goes to (the message id
# to both tables' columns, the error message to `deliveries.last_error` too).
_PROVIDER_TEXT = {
    "provider_message_id": _width(attempts.c.provider_message_id, deliveries.c.provider_message_id),
    "error_class": _width(attempts.c.error_class),
    "error_message": _width(attempts.c.error_message, deliveries.c.last_error),
}
# A provider's report goes to a delivery, or is held for one first (`hub.store.held_reports`): each of its texts
# fits both tables' columns, so a report held and then applied is the report applied at once.
_REPORT_WIDTHS = {
    "provider_message_id": _width(
        attempts.c.provider_message_id, deliveries.c.provider_message_id, held_reports.c.provider_message_id
    ),
    "provider_status": _width(deliveries.c.provider_status, held_reports.c.provider_status),
    "error": _width(deliveries.c.last_error, held_reports.c.error),
}


def _storable(attempt: AttemptRecord) -> dict[str, Any]:
    """The attempt's columns, its provider's text `_fitted`: on PostgreSQL one value a column refuses failed the
    record of the whole batch, and every message of it was sent again each time the lease ran out."""
    values = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
    for name, width in _PROVIDER_TEXT.items():
        values[name] = _fitted(values[name], width)
    return values


def storable_report(report: ProviderStatus) -> ProviderStatus:
    """The report as the deliveries and the held reports store it, its texts `_fitted`: held as it came, a status
    longer than its column (a status Twilio adds) or an error with a NUL failed on PostgreSQL, and the
    callback answered 500, where the same report applied to a recorded send was taken."""
    return replace(report, **{name: _fitted(getattr(report, name), width) for name, width in _REPORT_WIDTHS.items()})


def stored_message_id(provider_message_id: str) -> str:
    """A provider's message id as the deliveries, their attempts and the held reports store it (`_fitted`): what
    a report, and the lock on its message, are matched by."""
    return _fitted(provider_message_id, _REPORT_WIDTHS["provider_message_id"])


@overload
def _fitted(text: str, width: int | None) -> str: ...
@overload
def _fitted(text: None, width: int | None) -> None: ...
@overload
def _fitted(text: str | None, width: int | None) -> str | None: ...
def _fitted(text: str | None, width: int | None) -> str | None:
    """Provider text as a column takes it on both databases: without NUL characters, which PostgreSQL's text
    refuses (a provider's error message may end in one), and cut to `width` characters, the VARCHAR's length,
    which PostgreSQL enforces (an email's Message-ID, `<delivery id@sender domain>`, outgrows 100 with a long
    domain; the delivery id comes first, so a cut one stays unique)."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if width is None else text[:width]


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
    if row.status == "failed" and row.last_error in (WITHDRAWN_IN_UNMERGE, *_WITHDRAWN_IN_UNMERGE_BEFORE):
        return MISADDRESSED
    if row.status == "failed" and row.last_error == WITHDRAWN_DEVICE_HANDED_ON:
        return HANDED_ON
    if row.status not in REPLAYABLE_STATUSES:
        return row.status
    readdressed: dict[str, Any] = {}
    if handed_on := _handed_on(connection, row.profile_id, _recipients(row.target, row.content)):
        narrowed = _without(row.target, row.content, handed_on)
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


def target_of(connection: Connection, delivery_id: str) -> str | None:
    """The address a delivery was sent to."""
    return connection.execute(select(deliveries.c.target).where(deliveries.c.delivery_id == delivery_id)).scalar()


def apply_provider_status(
    connection: Connection, destination_id: str, report: ProviderStatus, now: datetime
) -> dict[str, Any] | None:
    """Record a provider's status for the delivery it sent as `report.provider_message_id`.

    Returns the delivery's id, profile, channel and target, and `settled_now`: whether this report
    settled it (a final status on a delivery that had none); None when no delivery of this
    destination has that provider id. A report for a settled delivery changes nothing.
    """
    report = storable_report(report)  # as recorded, and as its column takes its status
    row = connection.execute(
        select(
            deliveries.c.delivery_id, deliveries.c.status, deliveries.c.profile_id, deliveries.c.channel, deliveries.c.target
        ).where(deliveries.c.destination_id == destination_id, deliveries.c.provider_message_id == report.provider_message_id)
        .with_for_update()  # two callbacks for one message at once: the second reads what the first settled
    ).first()
    if row is None:
        return None
    if row.status not in SETTLED_STATUSES:
        values: dict[str, Any] = {"provider_status": report.provider_status, "updated_at": now}
        if report.final_status:
            values["status"] = report.final_status
        if report.error:
            values["last_error"] = mask_text(report.error)
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == row.delivery_id).values(**values))
    return {**row._mapping, "settled_now": row.status not in SETTLED_STATUSES and report.final_status is not None}


def last_attempt_at(connection: Connection, delivery_id: str) -> datetime | None:
    """When the delivery's last attempt started: when the provider took the message it reports on."""
    return connection.execute(select(func.max(attempts.c.started_at)).where(attempts.c.delivery_id == delivery_id)).scalar()


def search(
    connection: Connection,
    *,
    limit: int,
    profile_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    destination_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decision_id: str | None = None,
    recipient: RecipientOf = unrouted,
) -> list[dict[str, Any]]:
    """The delivery log, newest first, each delivery with its attempts; recipients and the emails and phone
    numbers in what was sent (a CRM field, a greeting) are masked: ops people read and export it.

    `since` (inclusive) and `until` (exclusive) bound when the delivery was planned. `recipient` says what
    each delivery's target is (`Router.recipient`), so a push token is masked as one; without it every target
    is masked as text, which leaves tokens whole.
    """
    query = select(deliveries).order_by(desc(deliveries.c.created_at)).limit(limit)
    for column, wanted in (
        (deliveries.c.profile_id, profile_id),
        (deliveries.c.status, status),
        (deliveries.c.channel, channel),
        (deliveries.c.destination_id, destination_id),
        (deliveries.c.decision_id, decision_id),
    ):
        if wanted:
            query = query.where(column == wanted)
    if since is not None:
        query = query.where(deliveries.c.created_at >= since)
    if until is not None:
        query = query.where(deliveries.c.created_at < until)
    found = [dict(row) for row in connection.execute(query).mappings()]
    by_delivery: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if found:
        rows = connection.execute(
            select(attempts)
            .where(attempts.c.delivery_id.in_([item["delivery_id"] for item in found]))
            .order_by(attempts.c.attempt_no)
        ).mappings()
        for row in rows:
            by_delivery[row["delivery_id"]].append({key: value for key, value in row.items() if key != "delivery_id"})
    for item in found:
        _mask_recipients(item, recipient(item["channel"], item["target"]))
        item.pop("claimed_until")
        # The latest replay out of the dead-letter queue (or of a failure): the attempts after it are its.
        replayed_at, after_attempt = item.pop("retry_from"), item.pop("retry_from_attempt")
        item["replayed"] = {"at": replayed_at, "after_attempt": after_attempt} if replayed_at else None
        item["attempt_log"] = by_delivery[item["delivery_id"]]
    return found


def _mask_recipients(item: dict[str, Any], identifier: Identifier | None) -> None:
    """Mask a delivery row's target and content in place; a multicast route's `recipients` (every device of
    the person) are of the target's kind, and masked as it is."""
    content = mask_value(item["content"])
    if "recipients" in content:
        content["recipients"] = [mask_recipient(each, identifier) for each in item["content"]["recipients"]]
    item["target"], item["content"] = mask_recipient(item["target"], identifier), content


def count_by_channel_and_status(connection: Connection) -> list[dict[str, Any]]:
    """Deliveries and the attempts they took, per channel and status."""
    rows = connection.execute(
        select(deliveries.c.channel, deliveries.c.status, func.count(), func.sum(deliveries.c.attempts))
        .group_by(deliveries.c.channel, deliveries.c.status)
        .order_by(deliveries.c.channel, deliveries.c.status)
    )
    return [{"channel": ch, "status": st, "count": n, "attempts": int(a or 0)} for ch, st, n, a in rows]


def unfinished(connection: Connection, now: datetime) -> int:
    """Deliveries being retried, or due for their first attempt; those held back by a delay or quiet hours
    (pending until a later time) are not work yet."""
    query = select(func.count()).select_from(deliveries).where(
        or_(deliveries.c.status == "retrying", (deliveries.c.status == "pending") & (deliveries.c.next_attempt_at <= now))
    )
    return connection.execute(query).scalar_one()


_GOES_AT = func.coalesce(deliveries.c.first_due_at, deliveries.c.created_at, type_=UTCDateTime)  # planned before i12: created_at
_GOING_SINCE = precompiled.InLists(  # the pipeline asks it for every decision it routes, the timer engine per set
    lambda profiles, channels: select(deliveries.c.profile_id, _GOES_AT).where(
        deliveries.c.profile_id.in_(profiles), deliveries.c.channel.in_(channels),
        _GOES_AT > bindparam("since", type_=UTCDateTime),
        # One that failed unsent (consent revoked since, too old to send) reached nobody: it spends no cap.
        or_(deliveries.c.status != "failed", deliveries.c.attempts > 0),
    )
)


def going_since(
    connection: Connection, profile_ids: Collection[str], channels: Sequence[str], since: datetime
) -> dict[str, list[datetime]]:
    """When each profile's deliveries on these channels go (or went: the end of their delay or quiet hours),
    from `since` on, those withdrawn unsent left out (profiles with none left out too): what the daily cap
    counts, for a set of profiles in one statement."""
    going: dict[str, list[datetime]] = {}
    for profile_id, goes_at in _GOING_SINCE.execute(connection, profile_ids, channels, since=since):
        going.setdefault(profile_id, []).append(goes_at)
    return going
