"""A Twilio outage end to end: 503s, then refused connections, then recovery; every SMS arrives exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.api import create_app as create_hub_app
from hub.runtime import Hub
from hub.serving import BackgroundServer
from tests.conftest import WRITE_KEY, make_settings, support_ticket, wait_for

PEOPLE = 12
SMS_ATTEMPTS = "WHERE delivery_id IN (SELECT delivery_id FROM deliveries WHERE channel = 'sms')"


@pytest.fixture
def fake() -> FakeTwilio:
    return FakeTwilio()


@pytest.fixture
def twilio_server(fake: FakeTwilio) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(fake)) as server:
        yield server


@pytest.fixture
def running(tmp_path: Path, fake: FakeTwilio, twilio_server: BackgroundServer) -> Iterator[tuple[Hub, httpx.Client]]:
    settings = make_settings(
        tmp_path,
        twilio_api_base_url=twilio_server.url,
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        send_timeout_seconds=2,
        breaker_failure_threshold=3,
        breaker_reset_seconds=0.4,
        delivery_max_attempts=100,
    )
    hub = Hub(settings)
    with BackgroundServer(create_hub_app(hub)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield hub, client


def journeys() -> list[dict]:
    now = datetime.now(timezone.utc)
    batch = []
    for n in range(PEOPLE):
        user, phone = f"outage-{n}", f"+1415555{n:04d}"
        batch += support_ticket(user, {"phone": phone}, now)
    return batch


def test_deliveries_wait_out_an_outage_behind_the_breaker_and_arrive_exactly_once(
    running: tuple[Hub, httpx.Client], fake: FakeTwilio, twilio_server: BackgroundServer
) -> None:
    hub, client = running
    breaker = hub.delivery.policies.for_destination("twilio_sms").breaker
    fake.fail_next(503, code=20500, message="Service unavailable", times=10_000)
    assert client.post("/v1/batch", json={"batch": journeys()}, auth=(WRITE_KEY, "")).status_code == 200

    wait_for(lambda: breaker.state != "closed")
    time.sleep(1.0)  # an outage of a second, with a breaker that probes every 0.4 s
    tried_during_503s = len(fake.requests)
    assert tried_during_503s < PEOPLE + 10  # the first wave plus a few probes, not a retry storm

    twilio_server.stop()  # now the host refuses connections outright
    time.sleep(1.0)
    assert fake.message_count == 0

    fake.reset()
    with BackgroundServer(create_app(fake), port=twilio_server.port):
        assert hub.wait_until_idle(timeout=30)
        assert breaker.state == "closed"
        arrived = Counter(m["to"] for m in fake.messages)
    assert len(arrived) == PEOPLE and set(arrived.values()) == {1}

    with hub.store.read() as connection:
        # Only SMS: the rule also plans a CRM update, and this hub has no Salesforce configured.
        rows = connection.exec_driver_sql("SELECT status, attempts FROM deliveries WHERE channel = 'sms'").all()
        outcomes = Counter(row[0] for row in connection.exec_driver_sql(f"SELECT outcome FROM attempts {SMS_ATTEMPTS}"))
        errors = {
            row[0].split(".")[0]
            for row in connection.exec_driver_sql(f"SELECT error_class FROM attempts {SMS_ATTEMPTS} AND error_class IS NOT NULL")
        }
    assert [status for status, _ in rows] == ["sent"] * PEOPLE  # nothing dead: they waited, they did not fail
    assert outcomes["sent"] == PEOPLE
    assert errors == {"twilio", "network"}  # 503s first, refused connections after
