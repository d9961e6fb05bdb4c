"""Work done as a set in one savepoint, falling back to one savepoint per item when the set fails.

A savepoint per item (a pipeline row, a due timer) keeps one bad item from
rolling back its neighbours, but costs two statements per item and
SQLAlchemy's nested-transaction bookkeeping on top. Nearly every set has no
bad item, so the set runs in one savepoint first; only a set that fails pays
for isolation, rolled back and run again item by item. Claims go the same
way (`ClaimsAfterFailure`): as a batch, with no savepoint at all, until one
fails on a row the hub cannot read or check; the next then takes its rows
one by one, each in a savepoint, and sets such a row aside
(`each_or_set_aside`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from hub.pii import mask_text

log = structlog.get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def as_set_or_one_by_one(
    connection: Connection,
    items: Sequence[Item],
    run_set: Callable[[Sequence[Item]], Result],
    run_alone: Callable[[Item], Result],
    *,
    kind: str,
) -> list[Result]:
    """`[run_set(items)]` run in one savepoint; if it raises, rolled back to it, `run_alone(item)` for each item.

    `run_alone` isolates its item (its own savepoint) and handles the item's
    failure. Whatever `run_set` produces for later (counts, due times, ids
    to mark) must be in its result, not in shared state: a set rolled back
    then leaves nothing behind, and each item counts once. `kind` names the
    items in the log.
    """
    if len(items) > 1:
        try:
            with connection.begin_nested():
                return [run_set(items)]
        except Exception:
            log.warning("an item of the set failed; running them one by one", kind=kind, items=len(items))
    return [run_alone(item) for item in items]


Key = TypeVar("Key")

# The error class of a row a worker set aside because the hub could not read or check it (`set_aside_reason`).
SET_ASIDE = "hub.internal"


def set_aside_reason(error: Exception, remedy: str) -> str:
    """Why a row was set aside, as its record keeps it (and the API shows it): the error it raised, masked as a
    provider's errors are, and what to do (`remedy`)."""
    return f"{SET_ASIDE}: {type(error).__name__}: {mask_text(str(error))} ({remedy})"


def is_row_fault(error: BaseException) -> bool:
    """Whether `error` may be one row's, to set that row aside: not the database's own refusal (a lost
    connection, a lock or statement timeout, a deadlock, a trigger or a permission refusing the statement: any
    `DBAPIError`), which says nothing about the row and is the worker's to back off from. What a row written by
    hand trips over is the hub's reading of it (a ValueError parsing a time, a payload of the wrong type)."""
    return not isinstance(error, DBAPIError)


def each_or_set_aside(
    connection: Connection, keys: Sequence[Key], take: Callable[[Key], Sequence[Result]],
    set_aside: Callable[[Key, Exception], None], judged: bool = False,
) -> list[Result]:
    """What `take(key)` gives for each key, each in a savepoint of its own; a key whose `take` raises is rolled
    back to it and given to `set_aside` with the error, so it costs only its own row.

    What is no row's fault is raised instead: the database's own refusals (`is_row_fault`), and, when `take`
    also judges the row by the hub's checks (`judged`: a delivery's claim checks), a failure of every key tried
    when there were several (a bug in a check, a setting it cannot read): each row would be dead-lettered for a
    fault of the hub's, the whole queue with it, and the worker would never hear of it. A `take` that only
    reads its row (an inbox row's or a timer's claim) fails for that row alone: two bad rows and nothing else
    due held the whole queue back."""
    taken: list[Result] = []
    failed: list[tuple[Key, Exception]] = []
    for key in keys:
        try:
            with connection.begin_nested():
                taken += take(key)
        except Exception as exc:
            if not is_row_fault(exc):
                raise
            failed.append((key, exc))
    if judged and len(failed) > 1 and len(failed) == len(keys):
        raise failed[0][1]
    for key, exc in failed:
        set_aside(key, exc)
    return taken


class ClaimsAfterFailure:
    """A worker's claims, taken as a batch until one fails, and the next one row at a time.

    A row the hub cannot read or check (a payload that is not a JSON object,
    a time the driver cannot parse: written by hand or by an older version)
    failed the whole claim, and the next claim took the same rows, oldest
    first: the worker's whole queue waited behind that row for ever. A claim
    in a savepoint would cost every batch two statements for a row that
    almost never exists, so a failed claim is left to roll its transaction
    back, and only the next claim goes row by row (`each_or_set_aside`),
    setting the bad row aside.
    """

    def __init__(self, kind: str) -> None:
        """`kind` names the rows in the log."""
        self.kind = kind
        self.failed = False  # the last claim raised: the next goes one row at a time

    def claim(self, as_batch: Callable[[], Result], one_by_one: Callable[[], Result]) -> Result:
        """`one_by_one()` after a claim that failed, otherwise `as_batch()`; a failure of that is raised, for the
        caller's transaction to roll back."""
        if self.failed:
            claimed = one_by_one()
            self.failed = False
            return claimed
        try:
            return as_batch()
        except Exception as exc:
            if not is_row_fault(exc):
                raise
            log.warning("a claim failed; the next takes its rows one by one, to set aside any the hub cannot handle",
                        kind=self.kind, exc_info=True)
            self.failed = True
            raise

    def run(self, step: Callable[[], Result]) -> Result:
        """`step()`, a transaction that claims; if its claim failed as a batch, `step()` again, now one by one."""
        one_by_one = self.failed
        try:
            return step()
        except Exception:
            if one_by_one or not self.failed:  # not the batch claim's failure
                raise
        return step()
