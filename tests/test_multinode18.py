"""Several hub nodes on one database: nodes starting together, a STOP taken in by one node while another claims the
message (or while another plans it), a node that stalls mid-batch, and a refused body with a long Content-Type on
PostgreSQL.

Each node is a hub of its own (its own engine and pool, as on separate machines) whose workers are not started,
so the test drives each step.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from connectors.sandbox.providers import SandboxProviders
from hub import claim_checks, identity
from hub.clock import utcnow
from hub.consent import set_consent_by_identifier
from hub.model import Identifier, PlannedDelivery, RawEvent
from hub.runtime import Hub
from hub.store import Store, delivery_log, inbox, outbox
from hub.store import _one_migrator_at_a_time as one_migrator_at_a_time
from hub.store.schema import touchpoints
from hub.store.sql import lock_profiles
from tests.conftest import WRITE_KEY, RunningHub, message, support_ticket
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on

POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
PROJECT = Path(__file__).resolve().parents[1]
PHONE = "+14155550142"

# What `touchhub serve` and `touchhub worker` do first: open the store, migrating it. Exits 3 with the hub's message.
NODE_START = """
import sys
from hub.errors import ConfigError
from hub.store.opening import open_store
try:
    open_store(sys.argv[1], migrate=True).dispose()
except ConfigError as exc:
    print(exc)
    sys.exit(3)
"""


def ended(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The process's exit code and the end of what it printed, once it has exited."""
    out, _ = process.communicate(timeout=120)
    return process.returncode, out.strip()[-400:]


def nodes(tmp_path: Path, database_url: str, sandbox: SandboxProviders, *names: str, **settings: Any) -> list[Hub]:
    return [hub_on(tmp_path / name, **sandbox.settings_overrides(), database_url=database_url, **settings) for name in names]


@POSTGRESQL
def test_nodes_starting_at_once_on_a_new_database_all_start(database_url: str) -> None:
    """Each node migrates on start, and nothing serialized them: on a new database the second one's CREATE TABLE
    failed on the catalog's unique key, and that node stopped with "cannot open it ... check that the database is
    up"."""
    starting = [
        subprocess.Popen([sys.executable, "-c", NODE_START, database_url], cwd=PROJECT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    assert [ended(node) for node in starting] == [(0, "")] * 3
    store = Store(database_url)
    try:
        assert store.is_current()
    finally:
        store.dispose()


@POSTGRESQL
def test_the_migrations_run_without_the_idle_in_transaction_timeout_a_short_lease_sets(database_url: str) -> None:
    """A node with a short lease (the timeout's floor, 2 s) was cut off mid-upgrade on a busy box: alembic imports
    each migration's module inside the transaction, between statements ("terminating connection due to
    idle-in-transaction timeout" at start-up)."""
    store = Store(database_url, lease=timedelta(seconds=0.05))
    try:
        with store.write() as connection:
            assert connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "2s"
        with store.write() as connection:
            one_migrator_at_a_time(connection)
            assert connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "0"
    finally:
        store.dispose()


@BOTH_DATABASES
def test_a_stop_taken_in_by_another_node_right_after_the_sms_was_planned_stops_it(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """The pipeline node plans the support SMS, the callback node takes in the person's STOP (what `POST
    /v1/callbacks/twilio_sms/inbound` runs), then the delivery node claims the SMS: consent was read again only for
    messages planned over 2 s before, and the SMS went to a number that had just texted STOP."""
    pipeline_node, callback_node, delivery_node = nodes(tmp_path, database_url, sandbox, "pipeline", "callbacks", "delivery")
    try:
        accept(pipeline_node, *support_ticket("stopper", {"phone": PHONE}))
        with callback_node.store.write() as connection:
            assert set_consent_by_identifier(connection, Identifier("phone", PHONE), "sms", False, utcnow(), "recipient keyword")
        while delivery_node.delivery.run_once():
            pass
        delivery_node.delivery.close()
        assert sandbox.twilio.messages == []
        with delivery_node.store.read() as connection:
            [sms] = delivery_log.search(connection, limit=10, channel="sms")
        assert (sms["status"], sms["attempts"]) == ("failed", 0)
        assert sms["last_error"] == "not sent: consent was revoked after it was planned"
    finally:
        for node in (pipeline_node, callback_node, delivery_node):
            node.store.dispose()


@POSTGRESQL
def test_a_stop_that_waited_for_the_profiles_lock_stops_an_sms_planned_meanwhile(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOP was stamped when its request came in; the claim looks for revocations stamped after the SMS was
    planned, less a leeway for clock skew. A STOP that waited longer than that leeway for the profiles lock (a
    pipeline backlog batch, a forget of a person with many rows) while the holder planned an SMS to the person
    was not seen: the SMS went out after the person had texted STOP. The leeway is cut to 0.5 s here, so a 1 s
    wait stands for one over the real 5 s."""
    monkeypatch.setattr(claim_checks, "REVOCATION_STAMP_LEEWAY", timedelta(seconds=0.5))
    pipeline_node, callback_node, delivery_node = nodes(tmp_path, database_url, sandbox, "pipeline", "callbacks", "delivery")
    try:
        accept(pipeline_node, message("identify", userId="u-bo", traits={"phone": PHONE}))

        def stop_arrives() -> None:  # what POST /v1/callbacks/twilio_sms does with an inbound STOP
            now = utcnow()
            with callback_node.store.write() as connection:
                set_consent_by_identifier(connection, Identifier("phone", PHONE), "sms", False, now, "recipient keyword")

        with pipeline_node.store.engine.connect() as connection:
            batch = connection.begin()
            lock_profiles(connection)
            stop = threading.Thread(target=stop_arrives)
            stop.start()
            connection.exec_driver_sql("SELECT pg_sleep(1)")  # the batch's other events
            [bo] = connection.execute(select(touchpoints.c.profile_id).distinct()).scalars().all()
            outbox.plan(connection, [PlannedDelivery(
                "sms-bo", "decision-bo", bo, "sms", "twilio_sms", PHONE,
                {"body": "Your order ships today", "template": "t.j2", "rule_id": "r1", "params": {}},
            )], utcnow())
            batch.commit()
        stop.join(10)
        while delivery_node.delivery.run_once():
            pass
        delivery_node.delivery.close()
        with delivery_node.store.read() as connection:
            [sms] = delivery_log.search(connection, limit=10, channel="sms")
    finally:
        for node in (pipeline_node, callback_node, delivery_node):
            node.store.dispose()
    assert sandbox.twilio.messages == []
    assert (sms["status"], sms["last_error"]) == ("failed", "not sent: consent was revoked after it was planned")


@POSTGRESQL
def test_a_node_stalled_mid_batch_holds_up_the_other_nodes_pipeline_only_a_few_leases(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A stalls inside a pipeline batch (a paused VM, a SIGSTOP, a partition): to PostgreSQL, a session idle
    in its transaction, holding the profiles lock. Nothing ended it, so node B's pipeline waited for that lock with
    no end (and so did every timer worker). The server ends A's transaction after two leases (here, their floor of
    2 s); A, thawed, finds its batch gone and processes nothing twice."""
    node_a, node_b = nodes(tmp_path, database_url, sandbox, "a", "b", lease_seconds=0.5)
    stalled, thaw = threading.Event(), threading.Event()
    resolve = identity.resolve

    def resolve_stalling_on_a(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("node-a"):
            stalled.set()
            thaw.wait(30)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(identity, "resolve", resolve_stalling_on_a)
    events = [message(userId=f"u{n}", event="Product Viewed", timestamp=utcnow().isoformat()) for n in range(3)]
    with node_a.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in events], utcnow())
    a, b = (ThreadPoolExecutor(1, thread_name_prefix=f"node-{name}") for name in "ab")
    try:
        a_run = a.submit(node_a.pipeline.run_once)
        assert stalled.wait(10)
        b_run = b.submit(lambda: sum(node_b.pipeline.run_once() for _ in range(3)))
        assert b_run.result(timeout=10) == 3, "node B waited for the stalled node A"
        thaw.set()
        assert a_run.exception(timeout=10) is not None, "the stalled batch went on after its transaction had ended"
        assert node_a.pipeline.run_once() == 0  # node A carries on, on a new connection, with nothing left to do
        with node_b.store.read() as connection:
            assert connection.execute(select(func.count()).select_from(touchpoints)).scalar_one() == 3
    finally:
        thaw.set()
        for pool in (a, b):
            pool.shutdown(wait=True)
        for node in (node_a, node_b):
            node.store.dispose()


@POSTGRESQL
def test_a_bad_body_with_a_long_content_type_is_a_400_and_kept_on_postgresql(running_hub: RunningHub) -> None:
    """The Content-Type went into its VARCHAR(200) column as it came: PostgreSQL refused the row, so the body that
    is not JSON was a 500 and not kept. Any client can send such a header (a multipart boundary, parameters)."""
    content_type = "application/json; " + "; ".join(f"p{n}=value-{n:04d}" for n in range(20))
    assert len(content_type) > 200
    answer = running_hub.client.post(
        "/v1/batch", content=b"{not json", headers={"Content-Type": content_type}, auth=(WRITE_KEY, "")
    )
    assert answer.status_code == 400, answer.text
    [kept] = running_hub.admin("/api/quarantine")["quarantine"]
    assert (kept["raw_body"], kept["content_type"]) == ("{not json", content_type[:200])
