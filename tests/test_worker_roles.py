"""HUB_WORKERS: a process runs only some workers, and the others pick up its work from the store."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.runtime import Hub
from hub.wakeup_channels import SocketFolder
from hub.wakeups import Wakeups
from hub.settings import HubSettings
from hub.store import Store, delivery_log, inbox
from tests.conftest import RunningHub, wait_for


def test_workers_are_read_from_a_comma_separated_list() -> None:
    assert HubSettings(_env_file=None, workers="pipeline, delivery").worker_roles == ("pipeline", "delivery")  # type: ignore[call-arg]
    assert HubSettings(_env_file=None).worker_roles == ("pipeline", "timers", "delivery")  # type: ignore[call-arg]
    assert HubSettings(_env_file=None, workers="").worker_roles == ()  # type: ignore[call-arg]  # ingest only


def test_an_unknown_worker_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="unknown worker pipelines: pick from pipeline, timers, delivery"):
        HubSettings(_env_file=None, workers="pipelines,timers")  # type: ignore[call-arg]


def journey(now: datetime) -> list[dict]:
    """A purchaser's ticket: post_purchase_support answers with an SMS (and an email and a CRM update)."""
    person = {"userId": "split-1", "context": {"traits": {"phone": "+14155550177", "email": "split@example.com"}}}
    return [
        {"type": "track", "event": "Order Completed", "messageId": "m-1", **person, "timestamp": (now - timedelta(days=1)).isoformat()},
        {"type": "track", "event": "Ticket Submitted", "messageId": "m-2", **person, "timestamp": now.isoformat()},
    ]


def events_pending(store: Store) -> int:
    with store.read() as connection:
        return inbox.count_by_status(connection).get("pending", 0)


@pytest.mark.hub_settings(workers="pipeline")
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_pipeline_only_process_leaves_its_deliveries_to_a_delivery_process(running_hub: RunningHub) -> None:
    assert running_hub.send(*journey(datetime.now(timezone.utc))).status_code == 200
    store = running_hub.hub.store
    wait_for(lambda: events_pending(store) == 0)
    with store.read() as connection:
        planned = delivery_log.count_by_channel_and_status(connection)
    assert {row["channel"] for row in planned} >= {"sms", "email"} and {row["status"] for row in planned} == {"pending"}
    assert running_hub.sandbox.twilio.messages == []
    assert not {"timers", "delivery"} & {thread.name for thread in threading.enumerate()}

    other = Hub(running_hub.hub.settings.with_overrides(workers="timers,delivery"))
    other.start()
    try:
        assert other.wait_until_idle(timeout=20)
    finally:
        other.stop()
    [sms] = running_hub.sandbox.twilio.messages
    assert sms["to"] == "+14155550177"
    [email] = running_hub.sandbox.smtp.received
    assert email.rcpt_tos == ["split@example.com"]


@pytest.mark.hub_settings(workers="pipeline")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_worker_in_another_process_is_woken_not_left_to_its_poll(running_hub: RunningHub) -> None:
    """The delivery worker of the other hub polls once a minute; NOTIFY wakes it when the pipeline plans the SMS."""
    other = Hub(running_hub.hub.settings.with_overrides(workers="delivery", worker_poll_seconds=60))
    other.start()
    try:
        time.sleep(0.5)  # the delivery worker's first look (nothing yet) is done; it naps its minute
        assert running_hub.send(*journey(datetime.now(timezone.utc))).status_code == 200
        wait_for(lambda: len(running_hub.sandbox.twilio.messages) == 1, timeout=20)
    finally:
        other.stop()


def test_an_announcement_wakes_the_worker_here_and_timers_by_their_due_time(tmp_path: Path) -> None:
    wakeups = Wakeups(f"sqlite:///{tmp_path}/hub.db")
    wakeups.announce("delivery")
    assert wakeups.events["delivery"].is_set() and not wakeups.events["pipeline"].is_set()
    told: list[datetime] = []
    wakeups.follow_timers(told.append)
    due = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    wakeups.announce("timers", due)
    assert told == [due] and not wakeups.events["timers"].is_set()
    busy: list[str] = []
    wakeups.wake_while_busy("delivery", lambda: busy.append("delivery"))
    wakeups.announce("delivery")
    wakeups.announce("pipeline")
    assert busy == ["delivery"]


@pytest.mark.hub_settings(workers="pipeline")
def test_on_sqlite_a_worker_in_another_process_is_woken_through_the_socket_folder(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    """As on PostgreSQL, with a datagram to the other hub's socket beside the database file."""
    other = Hub(running_hub.hub.settings.with_overrides(workers="delivery", worker_poll_seconds=60))
    other.start()
    try:
        wait_for(lambda: len(sockets(tmp_path)) == 2)  # both hubs listen
        time.sleep(0.5)  # its delivery worker's first look (nothing yet) is done; it naps its minute
        assert running_hub.send(*journey(datetime.now(timezone.utc))).status_code == 200
        wait_for(lambda: len(running_hub.sandbox.twilio.messages) == 1, timeout=20)
    finally:
        other.stop()
    wait_for(lambda: len(sockets(tmp_path)) == 1)  # a hub removes its socket when it stops


def sockets(folder: Path) -> list[Path]:
    return list((folder / "hub.db-wakeups").glob("*.sock"))


def test_a_socket_left_by_a_dead_process_is_removed_by_the_next_announcement(tmp_path: Path) -> None:
    folder = tmp_path / "hub.db-wakeups"
    folder.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(folder / "999999-dead.sock"))  # bound, then closed without unlinking: as after kill -9
    Wakeups(f"sqlite:///{tmp_path}/hub.db").announce("delivery")
    assert not (folder / "999999-dead.sock").exists()


def test_a_hub_that_starts_after_the_folder_was_listed_still_hears_the_next_announcement(tmp_path: Path) -> None:
    """Every pipeline batch announces, so the listing of the folder is kept until its mtime says a listener
    joined or left."""
    folder = tmp_path / "hub.db-wakeups"
    folder.mkdir()
    sender = SocketFolder(folder)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as first:
        first.bind(str(folder / "1-a.sock"))
        first.setblocking(False)
        sender.publish("delivery")
        assert first.recv(64) == b"delivery"
        sender.publish("pipeline")
        assert first.recv(64) == b"pipeline"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
            second.bind(str(folder / "2-b.sock"))  # a hub starts: the folder changes
            second.setblocking(False)
            sender.publish("timers")
            assert (first.recv(64), second.recv(64)) == (b"timers", b"timers")


def test_hubs_on_a_database_in_a_folder_too_deep_for_a_socket_address_still_wake_each_other(tmp_path: Path) -> None:
    """An AF_UNIX address holds 107 bytes: a hub whose store lived deeper only logged a warning, and its peers'
    work waited for the poll (this test's own temporary folder once grew past it)."""
    folder = tmp_path / ("deep" * 30) / "hub.db-wakeups"
    folder.parent.mkdir()
    listener, sender = SocketFolder(folder), SocketFolder(folder)
    heard: list[str] = []
    stopping = threading.Event()
    listening = threading.Thread(target=listener.listen, args=(heard.append, stopping))
    listening.start()
    try:
        wait_for(lambda: any(folder.glob("*.sock")))
        assert len(str(next(folder.glob("*.sock")))) > 107
        sender.publish("delivery")
        wait_for(lambda: heard == ["delivery"])
    finally:
        stopping.set()
        listener.interrupt()
        listening.join(timeout=5)
        listener.close()
        sender.close()
    assert not any(folder.glob("*.sock"))  # removed as it stopped


def test_an_unreadable_wake_up_is_logged_and_the_listener_goes_on(tmp_path: Path) -> None:
    wakeups = Wakeups(f"sqlite:///{tmp_path}/hub.db")
    for payload in ("mailer", "timers not-a-time", ""):
        wakeups._heard(payload)
    assert not any(event.is_set() for event in wakeups.events.values())
    wakeups._heard("pipeline")
    assert wakeups.events["pipeline"].is_set()


def test_only_a_process_that_delivers_falls_back_from_destinations_it_has_no_settings_for(tmp_path: Path) -> None:
    """A pipeline or timers process of a split deployment may run without the delivery nodes' credentials: it
    fell back from push to email for every person because FCM had no settings where it ran."""
    from tests.conftest import make_settings

    delivering = Hub(make_settings(tmp_path, workers="pipeline,timers,delivery"))
    routing_only = Hub(make_settings(tmp_path, workers="pipeline,timers"))
    assert "fcm_push" not in delivering.destinations
    assert (delivering.router.unserved.get("push"), routing_only.router.unserved) == ("fcm_push", {})
