"""The statements run per event or per batch search an index that fits them, whatever the size of the tables.

SQLite has no statistics on a fresh database, so its planner picks indexes
by the shape of the WHERE and ORDER BY alone, and a shape it misjudges costs
a walk that grows with the table: with 2,000 pending timers, an event that
only cancelled waits spent 165 us in an UPDATE that walked every pending
timer due after it; every pipeline claim sorted the whole inbox backlog.
Each test runs the statement through the store's own code, catches it on
its way to the driver and asks SQLite how it would run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, event

from hub.model import RawEvent
from hub.store import Store, inbox, timer_arming, timers, touchpoints
from hub.store.sql import query_plan

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)


@contextmanager
def plans_of(connection: Connection, table: str) -> Iterator[list[str]]:
    """SQLite's query plan of each statement on `table` run in the block, one line of text per statement."""
    caught: list[tuple[str, Any]] = []

    def catch(_conn: object, _cursor: object, statement: str, parameters: Any, _context: object, _many: bool) -> None:
        if f" {table}" in statement and not statement.startswith("EXPLAIN"):
            caught.append((statement, parameters))

    plans: list[str] = []
    event.listen(connection, "before_cursor_execute", catch)
    try:
        yield plans
    finally:
        event.remove(connection, "before_cursor_execute", catch)
    plans.extend(" | ".join(query_plan(connection, statement, parameters)) for statement, parameters in caught)


@pytest.mark.parametrize(("cancel", "rearm"), [(1, 0), (2, 0), (0, 1), (1, 1), (3, 2)])
def test_an_event_settling_timers_searches_the_profiles_own_timers(store: Store, cancel: int, rearm: int) -> None:
    with store.write() as connection, plans_of(connection, "timers") as plans:
        timer_arming.follow_event(
            connection, "profile", "tp", T0, T0,
            cancel=[(f"cancel{n}", LEASE) for n in range(cancel)], arm=[(f"arm{n}", T0 + LEASE) for n in range(rearm)],
        )
    settling = [plan for plan in plans if "ix_timers_profile_rule_status_due" in plan]
    assert len(settling) == 1, plans
    assert not any("ix_timers_status_due" in plan for plan in plans), plans


@pytest.mark.parametrize("claim", [
    pytest.param(lambda connection: inbox.claim(connection, 25, T0, LEASE), id="inbox"),
    pytest.param(lambda connection: timers.claim_due(connection, 25, T0, LEASE), id="timers"),
])
def test_a_claim_walks_its_queue_in_order_and_stops_at_the_limit(store: Store, claim: Callable[[Connection], object]) -> None:
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(3)], T0)
        with plans_of(connection, "") as plans:
            claim(connection)
    assert plans and not any("TEMP B-TREE" in plan for plan in plans), plans


def test_a_rules_recent_past_is_read_through_the_profiles_event_index(store: Store) -> None:
    with store.write() as connection, plans_of(connection, "touchpoints") as plans:
        touchpoints.events(connection, "profile", T0 - LEASE, T0, names=["Viewed", "Bought"])
    assert len(plans) == 1 and "ix_touchpoints_profile_event_time" in plans[0], plans
