"""Each absence rule's wait as timer workers last saw it, and the timers an edit that shortened it left due
too late: what `hub.shortened_waits` brings forward."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, and_, or_, select

from hub.store import sql
from hub.store.schema import absence_waits, timers

log = structlog.get_logger(__name__)

SHORTER_BY_AT_LEAST = 0.002  # seconds: `sql.SecondsBetween` on SQLite may be 1 ms off; a timer this little late stays


def due_after_their_wait(connection: Connection, waits: Mapping[str, timedelta]) -> list[tuple[str, datetime]]:
    """(timer id, due at) of these rules' pending timers due later than their anchor plus their rule's wait
    (rule id: wait), each with the due time that wait gives it: those armed before an edit shortened it.

    For a rule edit, not a hot path; still, the spans are compared in SQL:
    rules are picked by their waits, not their timers (there is no index
    on rule_id), so this walks every pending timer, and at 1M pending ones
    reading them out took 5.6 s where the walk takes under one.
    """
    span = sql.SecondsBetween(timers.c.due_at, timers.c.anchor_at)
    longer = or_(*(
        and_(timers.c.rule_id == rule_id, span > wait.total_seconds() + SHORTER_BY_AT_LEAST) for rule_id, wait in waits.items()
    ))
    rows = connection.execute(  # the anchors as the driver gives them, each read by `_anchor_at`
        select(timers.c.timer_id, timers.c.rule_id, sql.as_stored(timers.c.anchor_at))
        .where(timers.c.status == "pending", longer)
    )
    read = sql.read_stored(connection, timers.c.anchor_at)
    return [
        (timer_id, anchor_at + waits[rule_id]) for timer_id, rule_id, stored in rows
        if (anchor_at := _anchor_at(timer_id, stored, read)) is not None
    ]


def _anchor_at(timer_id: str, stored: object, read: Callable[[object], datetime]) -> datetime | None:
    """A timer's anchor time as `read` converts it from the driver's value, or None if it cannot be read.

    An anchor time the driver cannot parse (written by hand or by an older
    version) raised for the whole read: after every edit that shortened a
    wait, each timer step raised, and no timer fired. Such a timer is left as
    it is due, for its claim to set it aside (`hub.absence`).
    """
    try:
        return read(stored)
    except (ValueError, TypeError):
        log.warning("a pending timer's anchor time cannot be read; it is not brought forward", timer_id=timer_id,
                    exc_info=True)
        return None


def noted_waits(connection: Connection) -> dict[str, timedelta]:
    """Each absence rule's wait as a timer worker last noted it (`note_waits`)."""
    return {rule_id: timedelta(milliseconds=wait_ms) for rule_id, wait_ms in connection.execute(select(absence_waits))}


def note_waits(connection: Connection, waits: dict[str, timedelta]) -> None:
    """Keep these waits as seen, so the next edit (made while a worker runs or not) is compared with them."""
    sql.upsert(connection, absence_waits, [
        {"rule_id": rule_id, "wait_ms": wait // timedelta(milliseconds=1)} for rule_id, wait in waits.items()
    ], ["rule_id"])
