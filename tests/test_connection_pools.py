"""Vendor SDK clients keep a connection for every send the delivery engine may have in flight.

The engine runs up to HUB_DELIVERY_CONCURRENCY sends at once; those of
blocking SDKs (Salesforce, FCM, and any destination's blocking `send`, such
as Twilio's) on its worker threads. A client whose pool is smaller closes
each connection handed back to a full pool, and later sends open new ones
(in production, each with a TLS handshake). urllib3 logs a warning for each: these tests count them
while a slow sandbox holds more sends open together than any library default
keeps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException

from connectors.destinations.requests_transport import VendorAdapter
from connectors.destinations.twilio_sms import TwilioSmsConfig, TwilioSmsDestination
from connectors.sandbox import twilio as sandbox_twilio
from connectors.sandbox import webhooks as sandbox_webhooks
from hub.model import Delivery
from hub.serving import BackgroundServer

# More than requests keeps per host (10) and than TwilioHttpClient's min(32, CPUs + 4), on any machine.
IN_FLIGHT = 40
HELD_SECONDS = 0.5  # the sandbox's answer delay: long enough for every send to be open at once
VENDOR = "https://api.vendor.example"


def discarded(send: Callable[[], object], caplog: pytest.LogCaptureFixture) -> int:
    """Connections urllib3 closed for want of room in its pool while `IN_FLIGHT` sends ran at once."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"), ThreadPoolExecutor(IN_FLIGHT) as pool:
        for sent in [pool.submit(send) for _ in range(IN_FLIGHT)]:
            sent.result()
    return sum("discarding connection" in record.getMessage() for record in caplog.records)


@pytest.fixture
def slow_twilio() -> Iterator[tuple[sandbox_twilio.FakeTwilio, str]]:
    fake = sandbox_twilio.FakeTwilio()
    with BackgroundServer(sandbox_twilio.create_app(fake)) as server:
        yield fake, server.url


@pytest.fixture
def slow_receiver() -> Iterator[tuple[sandbox_webhooks.FakeWebhookReceiver, str]]:
    receiver = sandbox_webhooks.FakeWebhookReceiver(delay_seconds=HELD_SECONDS)
    with BackgroundServer(sandbox_webhooks.create_app(receiver)) as server:
        yield receiver, server.url


def test_the_twilio_destination_keeps_a_connection_per_sms_in_flight(
    slow_twilio: tuple[sandbox_twilio.FakeTwilio, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = slow_twilio
    config = TwilioSmsConfig(account_sid=fake.account_sid, auth_token=fake.auth_token, from_number="+15005550006",
                             api_base_url=url)
    destination = TwilioSmsDestination("sms", config)
    sms = Delivery("d-1", "sms", "sms", "+14155550142", {"body": "Hi"}, 0, datetime(2026, 1, 1, tzinfo=timezone.utc))

    def refused_sms() -> None:  # a 503 held open by the fake: the connection goes back to the pool all the same
        with pytest.raises(TwilioRestException):
            destination.send(sms)

    fake.fail_next(503, times=IN_FLIGHT, delay_seconds=HELD_SECONDS)
    assert discarded(refused_sms, caplog) == 0

    session = destination.client.http_client.session  # type: ignore[attr-defined]
    session.mount("http://", HTTPAdapter())  # requests' default pool: the check sees what it guards against
    fake.fail_next(503, times=IN_FLIGHT, delay_seconds=HELD_SECONDS)
    assert discarded(refused_sms, caplog) > 0
    destination.close()


def test_the_vendor_adapter_keeps_a_connection_per_call_in_flight(
    slow_receiver: tuple[sandbox_webhooks.FakeWebhookReceiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The adapter Salesforce and FCM calls go through (simple-salesforce and firebase-admin sessions)."""
    receiver, url = slow_receiver
    session = requests.Session()
    session.mount(VENDOR, VendorAdapter(re.compile(re.escape(VENDOR)), timeout=10, base_url=url))

    def call() -> None:
        session.post(f"{VENDOR}/hooks/vendor", json={}).raise_for_status()

    assert discarded(call, caplog) == 0
    assert receiver.max_in_flight == IN_FLIGHT

    plain = requests.Session()  # requests' default pool: the check sees what it guards against
    assert discarded(lambda: plain.post(f"{url}/hooks/vendor", json={}).raise_for_status(), caplog) > 0
    session.close()
    plain.close()
