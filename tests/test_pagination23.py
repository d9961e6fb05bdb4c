"""Admin API lists page with an opaque cursor: every row once, in a total order, new rows shifting nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Table, insert

from hub.store.schema import decisions, deliveries, quarantine, touchpoints
from tests.conftest import ADMIN_TOKEN, RunningHub

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOTH_ENGINES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
BATCH = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)  # one planning `now` stamps a whole batch


def delivery(n: int, at: datetime, status: str = "dead") -> dict[str, Any]:
    return {
        "delivery_id": f"del-{n:03}", "decision_id": f"dec-{n:03}", "profile_id": "p-1", "channel": "sms",
        "destination_id": "twilio_sms", "target": "+14155550100", "content": {"body": "hi"}, "status": status,
        "attempts": 1, "created_at": at, "updated_at": at, "next_attempt_at": at,
    }


def decision(n: int, at: datetime) -> dict[str, Any]:
    return {
        "decision_id": f"dec-{n:03}", "rule_id": "cart_abandonment", "rule_version": "1", "profile_id": "p-1",
        "touchpoint_id": f"tp-{n:03}", "decided_at": at, "created_at": at, "evidence": {}, "actions": [],
        "status": "fired",
    }


def touchpoint(n: int, at: datetime) -> dict[str, Any]:
    return {
        "touchpoint_id": f"tp-{n:03}", "inbox_id": n, "source_id": "default", "message_id": f"m-{n}", "kind": "track",
        "event": "Product Viewed", "stage": "consideration", "moment": "browsing", "profile_id": "p-1",
        "occurred_at": at, "received_at": at, "identifiers": [], "properties": {}, "traits": {}, "context": {},
        "mapping_version": "1",
    }


def quarantined(n: int, at: datetime) -> dict[str, Any]:
    return {"received_at": at, "stage": "ingest", "reason": f"bad body {n}", "problems": [], "raw_body": b"{"}


# path, the table, the answer's list and each row's id in it, a row n made at a time
LISTS: dict[str, tuple[Table, str, str, Callable[[int, datetime], dict[str, Any]]]] = {
    "/api/deliveries": (deliveries, "deliveries", "delivery_id", delivery),
    "/api/decisions": (decisions, "decisions", "decision_id", decision),
    "/api/touchpoints": (touchpoints, "touchpoints", "touchpoint_id", touchpoint),
    "/api/quarantine": (quarantine, "quarantine", "reason", quarantined),
}


def add(running_hub: RunningHub, table: Table, rows: list[dict[str, Any]]) -> None:
    with running_hub.hub.store.write() as connection:
        connection.execute(insert(table), rows)


def page(running_hub: RunningHub, path: str, **params: Any) -> tuple[list[dict[str, Any]], str | None]:
    answer = running_hub.admin(path, **params)
    return answer[LISTS[path][1]], answer["next_cursor"]


def read_through(running_hub: RunningHub, path: str, between: Callable[[], None] = lambda: None, **params: Any) -> list[str]:
    """Every id the list pages out, following `next_cursor` to its null, with `between` done after each page."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = page(running_hub, path, **params, **({"cursor": cursor} if cursor else {}))
        ids += [row[LISTS[path][2]] for row in rows]
        between()
        if cursor is None:
            return ids


@BOTH_ENGINES
@pytest.mark.parametrize("path", LISTS)
def test_rows_sharing_one_time_page_out_each_once_in_order(running_hub: RunningHub, path: str) -> None:
    """Only the newest `limit` rows could be read, and paging by `until` skipped rows sharing the boundary time."""
    table, _, _, make = LISTS[path]
    add(running_hub, table, [make(n, BATCH) for n in range(7)])
    everything = [row[LISTS[path][2]] for row in page(running_hub, path, limit=100)[0]]
    assert read_through(running_hub, path, limit=3) == everything
    assert sorted(everything) == sorted(make(n, BATCH)[LISTS[path][2]] for n in range(7))
    assert page(running_hub, path, limit=7)[1] is None  # a page that holds the rest says there is no more


@BOTH_ENGINES
def test_rows_added_between_pages_neither_shift_nor_repeat_them(running_hub: RunningHub) -> None:
    """An offset or a newest-`limit` read moved as planning added deliveries; a cursor keeps its place."""
    add(running_hub, deliveries, [delivery(n, BATCH) for n in range(7)])
    later = iter(range(100, 200))

    def plan_more() -> None:
        add(running_hub, deliveries, [delivery(next(later), BATCH + timedelta(minutes=5))])

    assert read_through(running_hub, "/api/deliveries", plan_more, limit=2) == [f"del-{n:03}" for n in reversed(range(7))]


@BOTH_ENGINES
def test_filters_hold_on_every_page(running_hub: RunningHub) -> None:
    add(running_hub, deliveries, [delivery(n, BATCH, "dead" if n % 2 else "failed") for n in range(9)])
    dead = read_through(running_hub, "/api/deliveries", status="dead", limit=2)
    assert dead == ["del-007", "del-005", "del-003", "del-001"]


@BOTH_ENGINES
def test_touchpoints_page_in_the_order_asked(running_hub: RunningHub) -> None:
    """The timeline (by occurred) pages by its own key; a cursor of the order by receipt is refused there."""
    add(running_hub, touchpoints, [{**touchpoint(n, BATCH), "occurred_at": BATCH - timedelta(hours=n % 3)} for n in range(6)])
    timeline = read_through(running_hub, "/api/touchpoints", order="occurred", limit=4)
    assert timeline == ["tp-003", "tp-000", "tp-004", "tp-001", "tp-005", "tp-002"]
    _, by_receipt = page(running_hub, "/api/touchpoints", limit=1)
    refused = running_hub.client.get("/api/touchpoints", params={"order": "occurred", "cursor": by_receipt}, headers=AUTH)
    assert (refused.status_code, refused.json()["detail"]) == (
        400, "cursor: it pages the touchpoints by received, not the touchpoints by occurred; pass a next_cursor this list answered"
    )


@BOTH_ENGINES
@pytest.mark.parametrize("cursor", ["not a cursor!", "WyJkZWxpdmVyaWVzIiwgWyJ5ZXN0ZXJkYXkiLCAiZGVsLTAwMSJdXQ", "e30"])
def test_a_bad_cursor_is_a_400_naming_it(running_hub: RunningHub, cursor: str) -> None:
    """Garbage, an altered time ("yesterday") or no key at all: each a 400 saying what to do, never a 500."""
    answer = running_hub.client.get("/api/deliveries", params={"cursor": cursor}, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("cursor: it is not one this hub gave (cut or altered)")


def test_another_lists_cursor_is_refused_saying_whose_it_is(running_hub: RunningHub) -> None:
    add(running_hub, deliveries, [delivery(n, BATCH) for n in range(3)])
    _, cursor = page(running_hub, "/api/deliveries", limit=1)
    answer = running_hub.client.get("/api/decisions", params={"cursor": cursor}, headers=AUTH)
    assert (answer.status_code, answer.json()["detail"]) == (
        400, "cursor: it pages the deliveries, not the decisions; pass a next_cursor this list answered"
    )
