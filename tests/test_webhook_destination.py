"""Outbound webhooks: Standard Webhooks signatures checked by the `standardwebhooks` library, error classes, SSRF guard.

The engine's async client (`deliver_async`) is checked against the sync one (`send`): same signature, same verdicts.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import trustme
from standardwebhooks import Webhook

from connectors.base import load_registry
from connectors.destinations import answer_excerpt, ssrf, webhook
from connectors.destinations.ssrf import AddressRefused, SsrfGuard
from connectors.destinations.webhook import ChatWebhookDestination, OutboundWebhookDestination
from connectors.sandbox.webhooks import FakeWebhookReceiver, create_app
from hub.destination_settings import webhook_destinations
from hub.errors import AuthDeliveryError, ConfigError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery, PlannedDelivery, SendResult
from hub.serving import BackgroundServer
from hub.settings import HubSettings
from hub.store import outbox
from tests.conftest import RunningHub, vendor_fake_fixtures


receiver, server, fresh = vendor_fake_fixtures("receiver", FakeWebhookReceiver, create_app)


def destination(
    server: BackgroundServer, receiver: FakeWebhookReceiver, kind: type[OutboundWebhookDestination] = OutboundWebhookDestination,
    **config: object,
) -> OutboundWebhookDestination:
    values = {"url": f"{server.url}/hooks/cdp", "secret": receiver.secret, "allowed_networks": ["127.0.0.1"], **config}
    return kind(kind.slug, kind.validate_config("test", values))


def delivery(channel: str = "webhook", **content: object) -> Delivery:
    return Delivery(
        delivery_id="8d7c3a52-8f57-5a8e-9d65-2b3f6a0c9e11",
        destination_id="outbound_webhook",
        channel=channel,
        target="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
        content={"body": "Still deciding? Chat with us.", "template": "t.j2", "rule_id": "r1", "params": {}, **content},
        attempts=0,
        created_at=datetime.now(timezone.utc),
    )


def unused_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def send_expecting(target: OutboundWebhookDestination, error: type[DeliveryError]) -> DeliveryError:
    with pytest.raises(error) as raised:
        target.send(delivery())
    return raised.value


def test_webhook_is_signed_per_standard_webhooks_with_the_idempotency_key_as_id(
    server: BackgroundServer, receiver: FakeWebhookReceiver
) -> None:
    result = destination(server, receiver).send(delivery(params={"audience": "hesitant_buyers"}))
    [request] = receiver.received
    headers = request["headers"]
    payload = Webhook(receiver.secret).verify(request["body"], headers)  # raises unless the signature matches
    assert headers["webhook-id"] == "8d7c3a52-8f57-5a8e-9d65-2b3f6a0c9e11" == result.provider_message_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["content-type"] == "application/json"
    assert payload["type"] == "profile.decision"
    assert payload["data"] == {
        "delivery_id": "8d7c3a52-8f57-5a8e-9d65-2b3f6a0c9e11",
        "profile_id": "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
        "rule_id": "r1",
        "template": "t.j2",
        "message": {"body": "Still deciding? Chat with us."},
        "params": {"audience": "hesitant_buyers"},
    }
    assert (result.status, result.response_summary["status"]) == ("delivered", 200)
    with pytest.raises(Exception, match="signature"):
        Webhook(receiver.secret).verify(request["body"].replace(b"r1", b"r2"), headers)


def test_chat_offers_and_rule_params_set_the_event_type(server: BackgroundServer, receiver: FakeWebhookReceiver) -> None:
    chat = destination(server, receiver, ChatWebhookDestination)
    chat.send(delivery("chat"))
    chat.send(delivery("chat", params={"type": "chat.coupon"}))
    types = [json.loads(r["body"])["type"] for r in receiver.received]
    assert types == ["chat.offer", "chat.coupon"]
    assert len({r["headers"]["webhook-id"] for r in receiver.received}) == 1  # a resend keeps its id


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_408_429_and_5xx_are_retryable_and_honour_retry_after(
    server: BackgroundServer, receiver: FakeWebhookReceiver, status: int
) -> None:
    receiver.fail_next(status, retry_after=7)
    error = send_expecting(destination(server, receiver), RetryableDeliveryError)
    assert (error.failure.error_class, error.failure.retry_after) == (f"http.{status}", 7)
    assert error.failure.response_summary["status"] == status


def test_retry_after_as_an_http_date(server: BackgroundServer, receiver: FakeWebhookReceiver) -> None:
    target = destination(server, receiver)
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=90), usegmt=True)
    receiver.fail_next(503, retry_after=later)
    error = send_expecting(target, RetryableDeliveryError)
    assert error.failure.retry_after is not None and 80 <= error.failure.retry_after <= 90


def test_during_a_secret_rotation_receivers_with_either_secret_verify(
    server: BackgroundServer, receiver: FakeWebhookReceiver
) -> None:
    """`previous_secret` set: a second signature, by the old secret, so a receiver verifies whichever it holds
    (Standard Webhooks' space-separated list; Svix signs with both while a rotation lasts)."""
    old = "whsec_" + base64.b64encode(b"the-secret-before-the-rotation").decode()
    destination(server, receiver, previous_secret=old).send(delivery())
    [request] = receiver.received
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (receiver.secret, old):
        Webhook(secret).verify(request["body"], request["headers"])  # raises unless a signature matches
    with pytest.raises(ConfigError, match="whsec_"):
        destination(server, receiver, previous_secret="not-a-secret")


@pytest.mark.parametrize(("status", "error"), [(400, PermanentDeliveryError), (404, PermanentDeliveryError),
                                               (410, AuthDeliveryError), (302, PermanentDeliveryError),
                                               (401, AuthDeliveryError), (403, AuthDeliveryError)])
def test_other_4xx_are_permanent_and_refused_signatures_auth(
    server: BackgroundServer, receiver: FakeWebhookReceiver, status: int, error: type[DeliveryError]
) -> None:
    receiver.fail_next(status)
    assert send_expecting(destination(server, receiver), error).failure.error_class == f"http.{status}"
    assert receiver.count == 1


def test_timeouts_and_refused_connections_are_retryable(
    server: BackgroundServer, receiver: FakeWebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver, "delay_seconds", 0.5)  # undone after the test: reset() keeps a receiver's delay
    timed_out = send_expecting(destination(server, receiver, timeout_seconds=0.1), RetryableDeliveryError)
    assert timed_out.failure.error_class == "network.timeout"
    refused = send_expecting(destination(server, receiver, url=f"http://127.0.0.1:{unused_port()}/x"), RetryableDeliveryError)
    assert refused.failure.error_class == "network.ConnectError"


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/hooks/cdp", "http://localhost:{port}/hooks/cdp",
                                 "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/", "http://[::1]:{port}/"])
def test_private_addresses_are_refused_unless_allowlisted(
    server: BackgroundServer, receiver: FakeWebhookReceiver, url: str
) -> None:
    guarded = destination(server, receiver, url=url.format(port=server.port), allowed_networks=[])
    error = send_expecting(guarded, PermanentDeliveryError)
    assert error.failure.error_class == "ssrf.address_refused" and "HUB_WEBHOOK_ALLOWED_NETWORKS" in error.failure.message
    assert receiver.count == 0
    assert destination(server, receiver, allowed_networks=["127.0.0.0/8"]).send(delivery()).status == "delivered"


def test_guard_connects_to_the_vetted_address_and_keeps_the_name_for_host_and_sni() -> None:
    pinned = SsrfGuard(["127.0.0.1"]).pin("https://localhost:8443/hooks?x=1")
    assert str(pinned.url) == "https://127.0.0.1:8443/hooks?x=1"
    assert pinned.headers == {"Host": "localhost:8443"} and pinned.extensions == {"sni_hostname": "localhost"}
    assert SsrfGuard().permits(ipaddress.ip_address("93.184.216.34"))
    with pytest.raises(AddressRefused):
        SsrfGuard(["10.0.0.0/8"]).pin("http://[::ffff:127.0.0.1]/")  # IPv4-mapped loopback is still loopback


@pytest.mark.parametrize(("secret", "reason"), [("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
                                                ("whsec_not base64!", "base64"), ("whsec_c2hvcnQ=", "24 to 64 bytes")])
def test_bad_secrets_are_config_errors_naming_the_key(secret: str, reason: str) -> None:
    with pytest.raises(ConfigError) as problems:
        OutboundWebhookDestination.validate_config("HUB_OUTBOUND_WEBHOOK_*", {"url": "https://x.example/h", "secret": secret})
    [problem] = problems.value.problems
    assert problem.startswith("HUB_OUTBOUND_WEBHOOK_*: secret:") and reason in problem


def test_chat_delivery_from_the_outbox_reaches_the_sandbox_signed(running_hub: RunningHub) -> None:
    planned = PlannedDelivery(
        delivery_id="0b8f0a4e-3c1d-5f7a-8e9b-1c2d3e4f5a6b", decision_id="d-1", profile_id="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
        channel="chat", destination_id="chat_webhook", target="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
        content={"body": "Need a hand comparing?", "template": "c.j2", "rule_id": "comparison_hesitation", "params": {}},
    )
    with running_hub.hub.store.write() as connection:
        outbox.plan(connection, [planned], datetime.now(timezone.utc))
    running_hub.hub.delivery_wake.set()
    running_hub.settle()
    [request] = running_hub.sandbox.webhooks.received
    assert request["name"] == "chat"
    payload = Webhook(running_hub.sandbox.webhooks.secret).verify(request["body"], request["headers"])
    assert (payload["type"], payload["data"]["message"]["body"]) == ("chat.offer", "Need a hand comparing?")
    [logged] = running_hub.admin("/api/deliveries", channel="chat")["deliveries"]
    assert logged["status"] == "sent" and logged["attempt_log"][0]["request_summary"]["webhook_id"] == planned.delivery_id


def deliver_async(target: OutboundWebhookDestination) -> SendResult:
    async def once() -> SendResult:
        try:
            return await target.deliver_async(delivery())
        finally:
            await target.close_async()

    return asyncio.run(once())


def test_an_async_webhook_is_signed_and_pinned_like_a_sync_one(server: BackgroundServer, receiver: FakeWebhookReceiver) -> None:
    by_name = destination(server, receiver, url=f"http://localhost:{server.port}/hooks/cdp")  # resolved off the loop
    result = deliver_async(by_name)
    [request] = receiver.received
    payload = Webhook(receiver.secret).verify(request["body"], request["headers"])  # raises unless the signature matches
    assert request["headers"]["webhook-id"] == result.provider_message_id == delivery().delivery_id
    assert request["headers"]["host"] == f"localhost:{server.port}"
    assert payload["data"]["profile_id"] == delivery().target
    assert result.response_summary == {"status": 200, "body": '{"ok":true}'}


@pytest.mark.parametrize(
    ("fault", "config"),
    [
        ((503, "7"), {}),
        ((429, None), {}),
        ((401, None), {}),
        ((410, None), {}),
        (None, {"timeout_seconds": 0.1}),
        (None, {"url": "http://127.0.0.1:{port}/x"}),
        (None, {"allowed_networks": []}),
    ],
    ids=["503-retry-after", "429", "401", "410", "timeout", "refused", "ssrf"],
)
def test_an_async_webhook_failure_is_classified_as_the_sync_one(
    server: BackgroundServer, receiver: FakeWebhookReceiver, fault: tuple[int, str | None] | None, config: dict
) -> None:
    if "url" in config:
        config = {**config, "url": config["url"].format(port=unused_port())}
    if "timeout_seconds" in config:
        receiver.delay_seconds = 0.5
    verdicts = []
    for send in (lambda target: target.deliver(delivery()), deliver_async):
        if fault is not None:
            receiver.fail_next(fault[0], retry_after=fault[1])
        with pytest.raises(DeliveryError) as raised:
            send(destination(server, receiver, **config))
        failure = raised.value.failure
        verdicts.append((type(raised.value), failure.error_class, failure.retry_after, failure.response_summary))
    sync, via_loop = verdicts
    assert via_loop == sync


def test_https_webhooks_connect_to_the_vetted_address_with_the_name_for_sni_from_either_client(
    server: BackgroundServer, receiver: FakeWebhookReceiver
) -> None:
    """Both clients dial 127.0.0.1 yet ask for (and verify) `localhost`: an unknown CA fails them alike."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(context)
    asked_for: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: asked_for.append(name)  # type: ignore[assignment,func-returns-value]
    listener = socket.create_server(("127.0.0.1", 0))

    def handshake_each() -> None:
        for _ in range(2):
            accepted, _address = listener.accept()
            with suppress(ssl.SSLError, OSError), context.wrap_socket(accepted, server_side=True):
                pass  # the client refuses our certificate: its verdict is what the test reads

    serving = threading.Thread(target=handshake_each, daemon=True)
    serving.start()
    url = f"https://localhost:{listener.getsockname()[1]}/hooks/cdp"
    verdicts = []
    for send in (lambda target: target.deliver(delivery()), deliver_async):
        with pytest.raises(DeliveryError) as raised:
            send(destination(server, receiver, url=url))
        verdicts.append((type(raised.value), raised.value.failure.error_class))
    serving.join(timeout=10)
    listener.close()
    assert asked_for == ["localhost", "localhost"]
    assert verdicts == [(RetryableDeliveryError, "network.ConnectError")] * 2


def test_the_signed_request_for_a_payload_is_byte_identical_to_the_recorded_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded from main before the guard kept vetted targets: body, headers and signature must not move
    (since then only `accept-encoding` was added, a header outside the signature)."""
    monkeypatch.setattr(webhook, "utcnow", lambda: datetime(2026, 12, 2, 11, 0, tzinfo=timezone.utc))
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    config = {"url": "http://127.0.0.1:9/hooks", "secret": secret, "allowed_networks": ["127.0.0.1"]}
    target = OutboundWebhookDestination("outbound_webhook", OutboundWebhookDestination.validate_config("test", config))
    sent = replace(delivery(body="Noch unschlüssig? 10 % – jetzt", params={"audience": "zögernd", "n": 1.5}),
                   created_at=datetime(2026, 12, 2, 11, 0, tzinfo=timezone.utc))
    request = target.signed_request(sent, target.pinned_target())
    assert request.body == (
        b'{"data":{"delivery_id":"8d7c3a52-8f57-5a8e-9d65-2b3f6a0c9e11","message":{"body":"Noch unschl\\u00fcssig? 10 %'
        b' \\u2013 jetzt"},"params":{"audience":"z\\u00f6gernd","n":1.5},"profile_id":"01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",'
        b'"rule_id":"r1","template":"t.j2"},"timestamp":"2026-12-02T11:00:00+00:00","type":"profile.decision"}'
    )
    assert request.headers == {
        "Host": "127.0.0.1:9", "accept-encoding": "identity", "content-type": "application/json", "webhook-id": "8d7c3a52-8f57-5a8e-9d65-2b3f6a0c9e11",
        "webhook-timestamp": "1796209200", "webhook-signature": "v1,5w3FW9/tkt8+cAoZNgDW6GRtHirmZ6Lq28JfJPuHBlU=",
    }


class Resolver:
    """`socket.getaddrinfo` answering `address` for every name, counting lookups; `clock` stands in for time.monotonic.

    The socket module's own function is replaced: httpx's connect to the vetted address asks it too (positionally).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, address: str) -> None:
        self.address, self.lookups, self.clock = address, 0, 1000.0
        monkeypatch.setattr(ssrf.socket, "getaddrinfo", self._getaddrinfo)
        monkeypatch.setattr(ssrf.time, "monotonic", lambda: self.clock)

    def _getaddrinfo(self, host: str, port: int, *_: object, **__: object) -> list[tuple]:
        self.lookups += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.address, port))]


def test_a_vetted_address_is_kept_briefly_and_a_rebinding_to_a_private_one_is_refused_once_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dns = Resolver(monkeypatch, "93.184.216.34")
    guard = SsrfGuard()
    url = "https://hooks.example.com/in"
    assert str(guard.pin(url).url) == "https://93.184.216.34/in" and dns.lookups == 1
    dns.address = "10.0.0.5"  # the record turns private (rebinding)
    dns.clock += ssrf.PIN_TTL_SECONDS - 0.1
    assert str(guard.pin(url).url) == "https://93.184.216.34/in"  # still the address it checked, never 10.0.0.5
    assert guard.vetted(url) is not None and dns.lookups == 1
    dns.clock += 0.1
    assert guard.vetted(url) is None
    for _ in range(2):  # refused on every send, none kept
        with pytest.raises(AddressRefused, match="10.0.0.5"):
            guard.pin(url)
    assert dns.lookups == 3
    dns.address = "93.184.216.35"  # fixed: the next send resolves and checks again at once
    assert str(guard.pin(url).url) == "https://93.184.216.35/in" and dns.lookups == 4


def test_an_ip_address_url_is_vetted_once_and_never_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    dns = Resolver(monkeypatch, "93.184.216.34")
    guard = SsrfGuard(["127.0.0.1"])
    first = guard.pin("http://127.0.0.1:8080/in")
    dns.clock += 10 * ssrf.PIN_TTL_SECONDS
    assert guard.vetted("http://127.0.0.1:8080/in") is first and dns.lookups == 0
    with pytest.raises(AddressRefused):  # each guard checks against its own allowlist
        SsrfGuard().pin("http://127.0.0.1:8080/in")


def test_an_async_send_to_a_host_name_reuses_the_vetted_address_without_a_lookup(
    server: BackgroundServer, receiver: FakeWebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns = Resolver(monkeypatch, "127.0.0.1")
    by_name = destination(server, receiver, url=f"http://hooks.example.com:{server.port}/hooks/cdp")

    async def twice() -> None:
        try:
            for _ in range(2):
                await by_name.deliver_async(delivery())
        finally:
            await by_name.close_async()

    asyncio.run(twice())
    assert dns.lookups == 1 and [r["headers"]["host"] for r in receiver.received] == [f"hooks.example.com:{server.port}"] * 2
    for request in receiver.received:
        Webhook(receiver.secret).verify(request["body"], request["headers"])


SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def to(url: str, kind: type[OutboundWebhookDestination] = ChatWebhookDestination, **config: object) -> OutboundWebhookDestination:
    """A destination for `url` on loopback (either family), without the sandbox receiver."""
    values = {"url": url, "secret": SECRET, "allowed_networks": ["127.0.0.1", "::1"], **config}
    return kind(kind.slug, kind.validate_config("test", values))


def deliver_sync(target: OutboundWebhookDestination) -> SendResult:
    try:
        return target.deliver(delivery())
    finally:
        target.close()


SENDERS = {"sync": deliver_sync, "async": deliver_async}


class RawReceiver:
    """A bare HTTP/1.1 listener on loopback that answers every request with `answer(connection)` and keeps each
    request head as bytes: what a receiver really gets (Host as sent), and answers no framework would send."""

    def __init__(self, answer: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.listener.getsockname()[1]}/hooks/chat"
        self.heads: list[bytes] = []
        self._answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with suppress(OSError), connection:
            connection.settimeout(5)
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536) or b"\r\n\r\n"
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(self.header_in(head, "content-length") or 0)
            while len(body) < length:
                body += connection.recv(65536)
            self.heads.append(head)
            self._answer(connection)

    @staticmethod
    def header_in(head: bytes, name: str) -> bytes | None:
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.encode():
                return value.strip()
        return None

    def header(self, name: str) -> bytes | None:
        """`name` in the one request received."""
        [head] = self.heads
        return self.header_in(head, name)

    def __enter__(self) -> RawReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.listener.close()


def answering(status: str, body: bytes = b"", *headers: str) -> Callable[[socket.socket], None]:
    head = "\r\n".join([f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]) + "\r\n\r\n"
    return lambda connection: connection.sendall(head.encode() + body)


def test_the_payload_timestamp_is_when_the_delivery_was_planned_on_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard Webhooks: the payload's `timestamp` is when the event occurred. A retry 9 minutes on, or a replay
    days later, is the same message (one webhook-id) and must tell the widget the same moment; only the
    `webhook-timestamp` header, the receiver's replay window, is the attempt's."""
    target = to("http://127.0.0.1:9/hooks/chat")
    planned = replace(delivery(), created_at=datetime(2026, 12, 2, 10, 59, 30, 250000, tzinfo=timezone.utc))
    sent = []
    for now in (datetime(2026, 12, 2, 11, 0, tzinfo=timezone.utc), datetime(2026, 12, 5, 11, 9, tzinfo=timezone.utc)):
        monkeypatch.setattr(webhook, "utcnow", lambda now=now: now)
        request = target.signed_request(planned, target.pinned_target())
        sent.append((request.body, request.headers["webhook-timestamp"]))
    target.close()
    (first, first_signed_at), (retry, retry_signed_at) = sent
    assert retry == first and json.loads(first)["timestamp"] == "2026-12-02T10:59:30.250000+00:00"
    assert (first_signed_at, retry_signed_at) == ("1796209200", "1796468940")  # 3 days 9 min on


@pytest.mark.parametrize("send", SENDERS)
def test_an_ipv6_literal_receiver_gets_a_bracketed_host_header(send: str) -> None:
    """RFC 9110 7.2: Host = uri-host [":" port], an IPv6 address in brackets; 'Host: ::1:PORT' cannot be parsed
    (which colon starts the port?)."""
    with RawReceiver(answering("200 OK", b"{}"), host="::1") as receiver:
        assert SENDERS[send](to(receiver.url)).status == "delivered"
        assert receiver.header("host") == receiver.url.split("/")[2].encode()  # [::1]:PORT


@pytest.mark.parametrize("send", SENDERS)
def test_an_idn_receiver_gets_its_ascii_name_in_the_host_header(
    server: BackgroundServer, receiver: FakeWebhookReceiver, monkeypatch: pytest.MonkeyPatch, send: str
) -> None:
    """A virtual host is matched on the ASCII (punycode) name; the Unicode form could not even be sent by httpx
    (UnicodeEncodeError on every try) and went out as raw UTF-8 from aiohttp."""
    Resolver(monkeypatch, "127.0.0.1")
    result = SENDERS[send](destination(server, receiver, url=f"http://xn--bcher-kva.example:{server.port}/hooks/cdp"))
    assert result.status == "delivered"
    assert [r["headers"]["host"] for r in receiver.received] == [f"xn--bcher-kva.example:{server.port}"]


def trickling_200(connection: socket.socket) -> None:
    """200 at once, then its body over 2 s: a receiver streaming its answer, or a slow link."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
    for _ in range(10):
        connection.sendall(b"accepted. ")
        time.sleep(0.2)


@pytest.mark.parametrize("send", SENDERS)
def test_an_answered_200_is_delivered_however_slow_its_body(send: str) -> None:
    """The status decides; the body is only the log's excerpt. Waiting for all of it within the send's timeout
    classified an accepted chat offer 'network.timeout' and sent it again."""
    with RawReceiver(trickling_200) as receiver:
        started = time.monotonic()
        result = SENDERS[send](to(receiver.url, timeout_seconds=0.5))
        assert time.monotonic() - started < 1.5  # the whole body takes 2 s
    assert result.status == "delivered"
    excerpt = result.response_summary["body"]
    assert excerpt.startswith("accepted.") and excerpt.endswith("…")  # not read to its end, so shown as cut


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """64 MiB of zeros as a ~65 KB gzip answer."""
    return gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)


@pytest.mark.parametrize("send", SENDERS)
def test_a_gzip_bomb_answer_is_not_inflated_whole(send: str, gzip_bomb: bytes) -> None:
    """The log keeps 200 characters of an answer from a receiver someone else runs: reading (and inflating) all of
    it cost 64 MiB+ per send, with 48 sends in flight. The hub asks for no compression, and reads what it keeps."""
    with RawReceiver(answering("500 Internal Server Error", gzip_bomb, "Content-Encoding: gzip")) as receiver:
        tracemalloc.start()
        try:
            with pytest.raises(RetryableDeliveryError) as raised:
                SENDERS[send](to(receiver.url, timeout_seconds=30))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert receiver.header("accept-encoding") == b"identity"
    assert raised.value.failure.error_class == "http.500"
    assert peak < 8 * 1024 * 1024, f"a {len(gzip_bomb)}-byte answer peaked at {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("send", SENDERS)
@pytest.mark.parametrize(
    ("coding", "body", "excerpt"),
    [
        ("gzip", gzip.compress(b'{"error":"bad"}'), '{"error":"bad"}'),
        ("deflate", zlib.compress(b'{"error":"bad"}'), '{"error":"bad"}'),
        ("br", b"\x0b\x07\x80{}\x03", "(br-coded answer not read)"),  # never decoded, so any bytes
    ],
    ids=["gzip", "deflate", "br"],
)
def test_an_answer_compressed_all_the_same_is_inflated_for_its_excerpt(
    send: str, coding: str, body: bytes, excerpt: str
) -> None:
    """Receivers that compress although asked not to: gzip and deflate are inflated (as far as the excerpt goes);
    other codings are named, not read."""
    with RawReceiver(answering("400 Bad Request", body, f"Content-Encoding: {coding}")) as receiver:
        with pytest.raises(PermanentDeliveryError) as raised:
            SENDERS[send](to(receiver.url))
    assert raised.value.failure.response_summary == {"status": 400, "body": excerpt}


@pytest.mark.parametrize("send", SENDERS)
@pytest.mark.parametrize("retry_after", ["²", "٣", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"])
def test_a_malformed_retry_after_is_ignored_and_the_status_decides(send: str, retry_after: str) -> None:
    """`str.isdigit()` is True for '²' and '٣', which `float` refuses, and a date too large overflows: the error
    escaped, so a permanent 400 became 'unexpected.ValueError', retried (and logged as a connector bug) until the
    policy gave up."""
    with RawReceiver(answering("400 Bad Request", b"bad", f"Retry-After: {retry_after}")) as receiver:
        with pytest.raises(DeliveryError) as raised:
            SENDERS[send](to(receiver.url))
    failure = raised.value.failure
    assert (type(raised.value), failure.error_class, failure.retry_after) == (PermanentDeliveryError, "http.400", None)


def test_a_cut_excerpt_ends_with_one_ellipsis() -> None:
    """`\\S*$` also matches the empty string left at the end, so every cut read '... for ……' in the log."""
    assert answer_excerpt.excerpt("a lead already exists for " + "x" * 300) == "a lead already exists for …"
    assert answer_excerpt.excerpt("a lead already exists for jane.doe@exa", whole=False) == "a lead already exists for …"
    assert answer_excerpt.excerpt("a lead already exists") == "a lead already exists"


def test_a_bad_allowed_network_is_a_config_error_naming_the_setting_and_the_entry() -> None:
    """Start-up gathers every ConfigError and reports them together; an unchecked entry raised a bare ValueError
    from the guard's constructor, and the hub died with a traceback instead."""
    settings = HubSettings(  # type: ignore[call-arg]
        _env_file=None, chat_webhook_url="https://chat.example.com/hooks", chat_webhook_secret=SECRET,
        webhook_allowed_networks="10.0.0.0/8,localhost",
    )
    with pytest.raises(ConfigError) as raised:
        webhook_destinations(load_registry(), settings)
    [problem] = raised.value.problems
    assert problem.startswith("HUB_CHAT_WEBHOOK_*: allowed_networks:") and "'localhost'" in problem


def test_a_compact_json_answer_cut_keeps_all_but_its_cut_value() -> None:
    """Most receivers answer compact JSON, one long "word": cutting back to the last blank left only "…" of a
    receiver's error. JSON's punctuation is a break too, and no email address holds it."""
    answer = json.dumps({"error": "invalid_signature", "detail": "x" * 250}, separators=(",", ":"))
    assert answer_excerpt.excerpt(answer) == '{"error":"invalid_signature","detail":"…'
