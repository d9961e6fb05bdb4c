"""Outbound webhooks (audit 22) as a Svix / Standard Webhooks user expects them: a 410 Gone parks the endpoint's
deliveries for ops, a receiver gets Svix's 15 seconds, and a host name whose first address refuses the connection is
reached on its next one.

Receivers are the sandbox's (`FakeWebhookReceiver`) or bare listeners on 127.0.0.1 (`RawReceiver`).
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import pytest

from connectors.destinations import ssrf
from connectors.destinations.ssrf import SsrfGuard
from connectors.base import load_registry
from hub.errors import AuthDeliveryError, RetryableDeliveryError
from hub.destination_settings import email_destination, webhook_destinations
from hub.model import PlannedDelivery
from hub.settings import HubSettings
from hub.store import outbox
from tests.conftest import RunningHub
from tests.test_dead_letter_replay import touchhub
from tests.test_webhook_destination import SECRET, SENDERS, RawReceiver, answering, to, unused_port

PROFILE = "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ"
GONE_ADVICE = (
    "webhook answered 410 Gone: the receiver wants no more webhooks at this URL, so the delivery is parked; set "
    "HUB_CHAT_WEBHOOK_URL to its new endpoint, or stop routing to it, then run "
    "`touchhub deliveries replay --all --destination chat_webhook`"
)


def chat_offer(number: int) -> PlannedDelivery:
    return PlannedDelivery(
        delivery_id=f"0b8f0a4e-3c1d-5f7a-8e9b-1c2d3e4f5a6{number}", decision_id=f"d-{number}", profile_id=PROFILE,
        channel="chat", destination_id="chat_webhook", target=PROFILE,
        content={"body": "Need a hand comparing?", "template": "c.j2", "rule_id": "comparison_hesitation", "params": {}},
    )


@pytest.mark.parametrize("send", SENDERS)
def test_a_410_gone_parks_the_delivery_and_says_what_to_do(send: str) -> None:
    """Standard Webhooks: 410 Gone means the receiver wants no more webhooks, and the sender should stop. It was a
    permanent failure of that one message, the log saying only "webhook answered 410 Gone"."""
    with RawReceiver(answering("410 Gone")) as receiver:
        with pytest.raises(AuthDeliveryError) as raised:
            SENDERS[send](to(receiver.url))
    failure = raised.value.failure
    assert (failure.error_class, failure.message) == ("http.410", GONE_ADVICE)


@pytest.mark.hub_settings(delivery_max_attempts=3)
def test_deliveries_to_a_gone_endpoint_wait_dead_lettered_until_replayed(running_hub: RunningHub) -> None:
    """Each message the receiver answered 410 was `failed`: `touchhub deliveries replay --all` (dead ones only) did not
    bring them back once ops fixed the endpoint, and each had to be found and replayed by id."""
    receiver = running_hub.sandbox.webhooks
    receiver.fail_next(410, times=2)
    with running_hub.hub.store.write() as connection:
        outbox.plan(connection, [chat_offer(1), chat_offer(2)], datetime.now(timezone.utc))
    running_hub.hub.delivery_wake.set()
    running_hub.settle()
    parked = running_hub.admin("/api/deliveries", channel="chat")["deliveries"]
    assert [(d["status"], len(d["attempt_log"])) for d in parked] == [("dead", 1), ("dead", 1)]  # never retried
    assert {d["last_error"] for d in parked} == {GONE_ADVICE}

    replayed = touchhub(running_hub, "replay", "--all", "--destination", "chat_webhook")
    assert replayed.returncode == 0, replayed.stderr
    assert "2 dead deliveries queued again" in replayed.stdout
    running_hub.settle()
    assert {d["status"] for d in running_hub.admin("/api/deliveries", channel="chat")["deliveries"]} == {"sent"}
    ids = [request["headers"]["webhook-id"] for request in receiver.received]
    assert sorted(ids[:2]) == sorted(ids[2:]) == sorted(d["delivery_id"] for d in parked)  # the same messages


def test_a_receiver_gets_15_seconds_to_answer() -> None:
    """Svix gives a receiver 15 s to answer, the least Standard Webhooks recommends; the hub cut it off after 10 s and
    retried a message the receiver was still taking in. Providers keep HUB_SEND_TIMEOUT_SECONDS."""
    def timeouts(**settings: object) -> dict[str, float]:
        built = {**webhook_destinations(registry, HubSettings(chat_webhook_url="https://chat.example.com/hooks",
                                                              chat_webhook_secret=SECRET, **settings)),
                 **email_destination(registry, HubSettings(**settings))}
        return {slug: destination.settings.timeout_seconds for slug, destination in built.items()}  # type: ignore[attr-defined]

    registry = load_registry()
    assert timeouts() == {"chat_webhook": 15.0, "email_smtp": 10.0}
    assert timeouts(webhook_timeout_seconds=30, send_timeout_seconds=5) == {"chat_webhook": 30.0, "email_smtp": 5.0}


class Resolver:
    """DNS answering every host with `addresses`, in that order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
        self.addresses = addresses
        monkeypatch.setattr(ssrf.socket, "getaddrinfo", self._getaddrinfo)

    def _getaddrinfo(self, host: str, port: int, *_: object, **__: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in self.addresses]


@pytest.mark.parametrize("send", SENDERS)
def test_a_host_whose_first_address_refuses_is_reached_on_its_next_permitted_one(
    send: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard pinned the first permitted address only: a receiver with two (IPv6 and IPv4, two balancers) whose
    first refused the connection was never reached, every retry failing with `network.ConnectError`. A private
    address in the answer that is not allowlisted is still never tried."""
    with RawReceiver(answering("200 OK")) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        Resolver(monkeypatch, "127.0.0.2", "10.0.0.5", "127.0.0.1")
        url = f"http://hooks.example.com:{port}/hooks/chat"
        result = SENDERS[send](to(url, allowed_networks=["127.0.0.0/8"]))
        assert result.status == "delivered"
        assert receiver.header("host") == f"hooks.example.com:{port}".encode()
    pinned = SsrfGuard(["127.0.0.0/8"]).pin(url)
    assert [str(each) for each in pinned.urls] == [f"http://127.0.0.{n}:{port}/hooks/chat" for n in (2, 1)]


@pytest.mark.parametrize("send", SENDERS)
def test_a_host_whose_every_address_refuses_is_a_retryable_connect_error(send: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trying the next addresses changes nothing when none answers: the last one's refusal is retried as before."""
    Resolver(monkeypatch, "127.0.0.2", "127.0.0.1")
    with pytest.raises(RetryableDeliveryError) as raised:
        SENDERS[send](to(f"http://hooks.example.com:{unused_port()}/hooks/chat", allowed_networks=["127.0.0.0/8"]))
    assert raised.value.failure.error_class == "network.ConnectError"
