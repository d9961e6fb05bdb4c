"""Work done as a set in one savepoint, falling back to one savepoint per item when the set fails.

A savepoint per item (a pipeline row, a due timer) keeps one bad item from
rolling back its neighbours, but costs two statements per item and
SQLAlchemy's nested-transaction bookkeeping on top. Nearly every set has no
bad item, so the set runs in one savepoint first; only a set that fails pays
for isolation, rolled back and run again item by item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog
from sqlalchemy import Connection

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
