"""A withdrawal never writes over a message another node recorded as sent (several nodes on one PostgreSQL)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import Identifier
from hub.store import outbox
from hub.store.identity_repair import unmerge
from hub.store.profile_views import find_profile_id, profile_view
from hub.store.schema import deliveries as deliveries_table
from hub.store.sends_in_flight import AttemptRecord, AttemptResult, record_attempts
from tests.conftest import message
from tests.test_absence_timers import accept
from tests.test_multinode18 import nodes


def ago(**delta: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat()


POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
PHONE = "+14155550166"


def blocked_on_a_lock(store: Any) -> bool:
    with store.read() as connection:
        return bool(connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).scalar())


@POSTGRESQL
def test_an_unmerge_on_one_node_leaves_an_sms_another_node_recorded_as_sent_meanwhile_sent(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Node D's delivery worker sent Amy's support SMS (to the phone Bo brought while the two were one profile)
    and is committing its record as an operator's unmerge runs on node R. The unmerge read the SMS as pending,
    waited for D's row lock, then set it `failed` with "not sent: planned for the other person ..." without
    asking whether it was still unsent: the log said the SMS did not go, its attempt that it did, and Twilio's
    later `delivered` callback was ignored (a failed delivery is settled)."""
    repair_node, delivery_node = nodes(tmp_path, database_url, sandbox, "repair", "delivery", lease_seconds=30)
    try:
        accept(repair_node, message("identify", anonymousId="amy-web", traits={"email": "amy@x.io"}, timestamp=ago(hours=30)))
        accept(repair_node, message("identify", userId="bo", traits={"phone": PHONE}, timestamp=ago(hours=29)))
        accept(repair_node, message("identify", userId="bo", traits={"email": "amy@x.io"}, timestamp=ago(hours=28)))
        with repair_node.store.read() as connection:
            amy = find_profile_id(connection, Identifier("email", "amy@x.io"))
            [bo] = profile_view(connection, amy)["merged_profile_ids"]
        accept(repair_node, message(anonymousId="amy-web", event="Order Completed", timestamp=ago(hours=20)),
               message(anonymousId="amy-web", event="Ticket Submitted", timestamp=ago(minutes=1)))
        with delivery_node.store.write() as connection:
            claimed = outbox.claim_due(connection, 10, utcnow(), timedelta(seconds=30))
        [sms] = [d for d in claimed if d.channel == "sms"]
        assert sms.target == PHONE and sms.profile_id == amy
        record = delivery_node.store.engine.connect()
        transaction = record.begin()
        record_attempts(record, [AttemptResult(sms, AttemptRecord(
            utcnow(), 12.0, "sent", "SM" + "2" * 32, None, None, {"to": "+1***"}, {"status": "queued"}), "sent", None)])

        def operator_unmerges() -> None:
            with repair_node.store.write() as connection:
                unmerge(connection, amy, bo, utcnow())

        with ThreadPoolExecutor(1) as pool:
            unmerging = pool.submit(operator_unmerges)
            deadline = time.monotonic() + 10
            while not blocked_on_a_lock(repair_node.store) and not unmerging.done():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            transaction.commit()
            record.close()
            unmerging.result(timeout=20)
        with repair_node.store.read() as connection:
            row = connection.execute(select(deliveries_table).where(deliveries_table.c.delivery_id == sms.delivery_id)).mappings().one()
        assert (row["status"], row["last_error"]) == ("sent", None)
    finally:
        for node in (repair_node, delivery_node):
            node.store.dispose()
