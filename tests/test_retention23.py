"""Retention: raw data older than HUB_RETENTION_DAYS goes, hourly and on `touchhub prune`; what was made of it stays.

Before, nothing ever expired: every raw body (emails, phones, IP addresses as
the sender wrote them), every quarantined body and every attempt's summary
stayed in the store for ever, and the timers table grew by a row per cart.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from hub.cli import app
from hub.clock import utcnow
from hub.retention import prune, retention_cutoff
from hub.runtime import Hub
from hub.store import Store
from hub.store.retention import prune_batches
from hub.store.schema import attempts, consent_messages, held_reports, inbox, quarantine, timers, touchpoints
from tests.conftest import make_settings, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

NOW = utcnow()
OLD = NOW - timedelta(days=100)
RECENT = NOW - timedelta(days=10)


def _inbox(connection: Any, message_id: str, received_at: datetime, status: str) -> None:
    connection.execute(insert(inbox).values(
        dedup_key=f"default:{message_id}", source_id="default", message_id=message_id, payload={"email": "a@x.com"},
        received_at=received_at, status=status, attempts=0, available_at=received_at,
    ))


def _quarantined(connection: Any, received_at: datetime) -> None:
    connection.execute(insert(quarantine).values(
        received_at=received_at, stage="ingest", reason="bad", problems=[], raw_body=b"{}",
    ))


def _attempt(connection: Any, delivery_id: str, started_at: datetime) -> None:
    connection.execute(insert(attempts).values(
        delivery_id=delivery_id, attempt_no=1, started_at=started_at, duration_ms=1.0, outcome="sent",
        request_summary={}, response_summary={},
    ))


def _timer(connection: Any, timer_id: str, due_at: datetime, status: str, settled_at: datetime | None) -> None:
    connection.execute(insert(timers).values(
        timer_id=timer_id, rule_id="cart_abandonment", profile_id="p1", touchpoint_id=timer_id, anchor_at=due_at,
        due_at=due_at, status=status, created_at=due_at, settled_at=settled_at,
    ))


def _touchpoint(connection: Any) -> None:
    connection.execute(insert(touchpoints).values(
        touchpoint_id="t-old", inbox_id=1, source_id="default", message_id="old-done", kind="track", event="Order",
        stage="decision", moment="purchase", profile_id="p1", occurred_at=OLD, received_at=OLD, identifiers=[],
        properties={}, traits={}, context={}, mapping_version="v1",
    ))


def _fill(store: Store) -> None:
    """Old and recent rows of every kind that expires, and old rows that must stay."""
    with store.write() as connection:
        _inbox(connection, "old-done", OLD, "done")
        _inbox(connection, "old-failed", OLD, "failed")
        _inbox(connection, "old-pending", OLD, "pending")  # not yet processed: never expires
        _inbox(connection, "recent-done", RECENT, "done")
        _quarantined(connection, OLD)
        _quarantined(connection, RECENT)
        _attempt(connection, "d-old", OLD)
        _attempt(connection, "d-old", OLD + timedelta(seconds=1))
        _attempt(connection, "d-recent", RECENT)
        _timer(connection, "fired-old", OLD, "fired", OLD)
        _timer(connection, "cancelled-old", OLD, "cancelled", OLD - timedelta(minutes=1))
        _timer(connection, "pending-old", OLD, "pending", None)  # still due: never expires
        _timer(connection, "fired-late", OLD, "fired", RECENT)  # armed for an old event, settled recently
        _timer(connection, "fired-recent", RECENT, "fired", RECENT)
        for when, message in ((OLD, "SM-old"), (RECENT, "SM-recent")):
            connection.execute(insert(held_reports).values(
                destination_id="twilio_sms", provider_message_id=message, provider_status="delivered",
                revokes_consent=False, received_at=when,
            ))
            connection.execute(insert(consent_messages).values(
                destination_id="twilio_sms", message_id=message, received_at=when,
            ))
        _touchpoint(connection)


def _left(store: Store) -> dict[str, Any]:
    with store.read() as connection:
        return {
            "inbox": sorted(connection.execute(select(inbox.c.message_id)).scalars()),
            "quarantine": connection.execute(select(func.count()).select_from(quarantine)).scalar_one(),
            "attempts": sorted(connection.execute(select(attempts.c.delivery_id)).scalars()),
            "timers": sorted(connection.execute(select(timers.c.timer_id)).scalars()),
            "held_reports": sorted(connection.execute(select(held_reports.c.provider_message_id)).scalars()),
            "consent_messages": sorted(connection.execute(select(consent_messages.c.message_id)).scalars()),
            "touchpoints": connection.execute(select(func.count()).select_from(touchpoints)).scalar_one(),
        }


PRUNED = {
    "inbox": ["old-pending", "recent-done"],
    "quarantine": 1,
    "attempts": ["d-recent"],
    "timers": ["fired-late", "fired-recent", "pending-old"],
    "held_reports": ["SM-recent"],
    "consent_messages": ["SM-recent"],
    "touchpoints": 1,
}


def test_prune_deletes_only_settled_rows_past_the_retention(store: Store) -> None:
    _fill(store)
    deleted = prune(store, retention_cutoff(90))
    assert _left(store) == PRUNED
    assert deleted == {
        "raw events (inbox)": 2, "quarantined bodies": 1, "delivery attempts": 2, "settled timers": 2,
        "held provider reports": 1, "applied consent replies": 1,
    }
    assert prune(store, retention_cutoff(90)) == {}  # nothing left to go


def test_prune_goes_in_batches_until_nothing_old_is_left(store: Store) -> None:
    with store.write() as connection:
        for number in range(7):
            _attempt(connection, f"d-{number}", OLD + timedelta(seconds=number))
        _attempt(connection, "d-recent", RECENT)
    batches = list(prune_batches(store, NOW - timedelta(days=90), batch_size=3))
    assert [count for label, count in batches if label == "delivery attempts"] == [3, 3, 1]
    assert _left(store)["attempts"] == ["d-recent"]


def _cli(database_url: str, *args: str, **env: str) -> Any:
    return CliRunner().invoke(app, ["prune", *args], env={"HUB_DATABASE_URL": database_url, "COLUMNS": "200", **env})


def _rows(output: str) -> dict[str, int]:
    cells = (line.replace("│", "|").split("|") for line in output.splitlines())
    return {row[1].strip(): int(row[2]) for row in cells if len(row) == 4 and row[2].strip().isdigit()}


def test_touchhub_prune_counts_on_a_dry_run_and_deletes_otherwise(store: Store, database_url: str) -> None:
    _fill(store)
    dry = _cli(database_url, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Would delete" in dry.output
    assert _rows(dry.output)["raw events (inbox)"] == 2 and _rows(dry.output)["settled timers"] == 2
    assert _left(store)["inbox"] == ["old-done", "old-failed", "old-pending", "recent-done"]  # a dry run deletes nothing

    pruned = _cli(database_url)
    assert pruned.exit_code == 0, pruned.output
    assert _rows(pruned.output)["delivery attempts"] == 2
    assert _left(store) == PRUNED


def test_touchhub_prune_with_a_shorter_period_and_with_retention_off(store: Store, database_url: str) -> None:
    _fill(store)
    off = _cli(database_url, HUB_RETENTION_DAYS="0")
    assert off.exit_code == 2 and "--older-than-days" in off.output  # says how to prune anyway
    assert len(_left(store)["inbox"]) == 4

    shorter = _cli(database_url, "--older-than-days", "5", HUB_RETENTION_DAYS="0")
    assert shorter.exit_code == 0, shorter.output
    assert _left(store)["inbox"] == ["old-pending"]  # the 10-day-old event went too


def test_a_running_hub_prunes_at_its_start_unless_retention_is_off(store: Store, database_url: str, tmp_path: Path) -> None:
    _fill(store)
    kept = Hub(make_settings(tmp_path, database_url=database_url, workers="timers", retention_days=0))
    kept.start()
    kept.stop()
    assert len(_left(store)["inbox"]) == 4

    hub = Hub(make_settings(tmp_path, database_url=database_url, workers="timers"))
    hub.start()
    try:
        wait_for(lambda: _left(store) == PRUNED, timeout=10)
    finally:
        hub.stop()
