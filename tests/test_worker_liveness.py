"""A worker that dies is seen (liveness probe, `touchhub worker`'s exit), one that outlives a step's BaseException
goes on, and a hub stopped while a worker is still in its step leaves open what that step uses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import typer

from connectors.sandbox.providers import SandboxProviders
from hub import runtime, workers
from hub.api import create_app
from hub.cli_processes import wait_while_workers_live
from hub.model import Delivery, SendResult
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.workers import Worker
from tests.conftest import ADMIN_TOKEN, RunningHub, WRITE_KEY, logs_of, make_settings, support_ticket, wait_for

EXIT_REASON = "the connector called sys.exit()"


def running(step: Callable[[], int]) -> Worker:
    worker = Worker("test", step, threading.Event(), poll_seconds=0.01)
    worker.start()
    return worker


def replace_sms_connector(hub: Hub, send: Callable[[Delivery], SendResult]) -> None:
    """The hub's SMS destination, with `send` as the connector code its sends run on the engine's loop: the part
    of a worker's step that a connector's author writes."""
    original = hub.destinations["twilio_sms"]

    class Connector(type(original)):  # type: ignore[misc, valid-type]
        async def send_async(self, delivery: Delivery) -> SendResult:
            return send(delivery)

    hub.destinations["twilio_sms"] = Connector("twilio_sms", original.config)


def send_a_text(client: httpx.Client) -> None:
    """Events that make the post_purchase_support rule text the customer."""
    answer = client.post("/v1/batch", json={"batch": support_ticket("u-1", {"phone": "+14155550100"})},
                         auth=(WRITE_KEY, ""))
    assert answer.status_code == 200, answer.text


def exits(*_: object) -> NoReturn:
    """A connector that calls sys.exit(): what a worker must not outlive."""
    raise SystemExit(EXIT_REASON)


def test_a_step_raising_cancelled_error_fails_that_step_and_the_worker_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, `asyncio.CancelledError` (a BaseException) out of a step ended the worker's thread silently."""
    steps: list[int] = []

    def step() -> int:
        steps.append(1)
        if len(steps) == 1:
            raise asyncio.CancelledError()
        return 0

    with logs_of(monkeypatch, workers) as logs:
        worker = running(step)
        wait_for(lambda: len(steps) >= 3)
    assert worker.death is None
    assert worker.stop()
    assert [entry["worker"] for entry in logs if entry["event"] == "worker step failed"] == ["test"]


def test_a_worker_ended_by_an_exit_is_recorded_dead_with_the_reason_and_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a worker thread that ended without `stop()` left no trace: nothing could tell it was gone."""
    with logs_of(monkeypatch, workers) as logs:
        worker = running(exits)
        wait_for(lambda: worker.death is not None)
    assert worker.death == f"SystemExit: {EXIT_REASON}"
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [(entry["worker"], entry["reason"]) for entry in errors] == [("test", worker.death)]


def test_stop_says_whether_the_worker_ended_its_step() -> None:
    """Before, `stop` returned nothing after its join timed out: the hub closed what the step still used."""
    release = threading.Event()
    worker = running(lambda: int(release.wait()))
    time.sleep(0.05)
    assert worker.stop(timeout=0.1) is False
    release.set()
    assert worker.stop() is True


def test_liveness_is_a_503_naming_the_dead_worker(running_hub: RunningHub) -> None:
    """Before, /healthz answered "ok" with the delivery worker dead, so no orchestrator restarted the hub."""
    assert running_hub.client.get("/healthz").text == "ok"
    replace_sms_connector(running_hub.hub, exits)
    send_a_text(running_hub.client)
    wait_for(lambda: running_hub.hub.dead_workers() != [])
    assert running_hub.hub.dead_workers() == [("delivery", f"SystemExit: {EXIT_REASON}")]
    answer = running_hub.client.get("/healthz")
    assert answer.status_code == 503
    assert f"worker delivery died (SystemExit: {EXIT_REASON})" in answer.text
    assert "restart the hub" in answer.text


def test_touchhub_worker_exits_1_naming_the_dead_worker(running_hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, `touchhub worker` waited for its stop signal for ever with its delivery worker dead."""
    replace_sms_connector(running_hub.hub, exits)
    send_a_text(running_hub.client)
    with pytest.raises(typer.Exit) as ended:
        wait_while_workers_live(running_hub.hub, threading.Event(), poll_seconds=0.05)
    assert ended.value.exit_code == 1
    said = " ".join(capsys.readouterr().err.split())
    assert f"worker delivery died (SystemExit: {EXIT_REASON})" in said and "supervisor" in said


def sent_texts(client: httpx.Client) -> list[str]:
    answer = client.get("/api/deliveries", params={"status": "sent"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return [delivery["provider_message_id"] for delivery in answer.json()["deliveries"] if delivery["channel"] == "sms"]


@pytest.fixture
def served_hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[tuple[Hub, httpx.Client]]:
    """A hub whose workers the test starts and stops itself, its HTTP API served beside them."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))
    with BackgroundServer(create_app(hub, run_workers=False)) as server, httpx.Client(base_url=server.url) as client:
        yield hub, client


def test_stopping_a_hub_with_a_worker_still_in_its_step_leaves_open_what_it_uses(
    served_hub: tuple[Hub, httpx.Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `Hub.stop` closed the delivery engine under the send still running on its loop and raised
    RuntimeError (and disposed the store that send was to be recorded in)."""
    hub, client = served_hub
    sending, release = threading.Event(), threading.Event()

    def blocks(_delivery: Delivery) -> SendResult:  # blocks the engine's loop, so the worker's step
        sending.set()
        release.wait()
        return SendResult("queued", "SM-released")

    replace_sms_connector(hub, blocks)
    hub.start()
    send_a_text(client)
    assert sending.wait(20)
    with logs_of(monkeypatch, runtime) as logs:
        hub.stop(join_seconds=0.2)
    assert [(entry["log_level"], entry["worker"]) for entry in logs] == [("warning", "delivery")]
    release.set()
    wait_for(lambda: sent_texts(client) == ["SM-released"])  # recorded in the store the stop left open
    hub.stop()



def test_a_send_ended_by_cancelled_error_is_dropped_and_later_deliveries_still_go(running_hub: RunningHub) -> None:
    """Before, the cancelled send task stayed among the sends in flight and raised its CancelledError again at
    every step: the worker lived on, but no delivery was recorded again."""
    sends: list[str] = []

    def cancelled_first(delivery: Delivery) -> SendResult:
        sends.append(delivery.delivery_id)
        if len(sends) == 1:
            raise asyncio.CancelledError()
        return SendResult("queued", "SM-after")

    replace_sms_connector(running_hub.hub, cancelled_first)
    send_a_text(running_hub.client)
    wait_for(lambda: len(sends) == 1)
    answer = running_hub.client.post(
        "/v1/batch", json={"batch": support_ticket("u-2", {"phone": "+14155550101"})}, auth=(WRITE_KEY, "")
    )
    assert answer.status_code == 200, answer.text
    wait_for(lambda: sent_texts(running_hub.client) == ["SM-after"])
    assert running_hub.hub.dead_workers() == []
