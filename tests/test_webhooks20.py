"""Outbound webhooks (audit 20): what the delivery log shows of a receiver (its URL's token, a redirect's
Location), an answer only one client took, and settings and rule params refused at start, naming the setting,
instead of crashing the hub or going out.

Receivers are bare listeners on 127.0.0.1 (`RawReceiver`), for answers no framework would send, or the sandbox's.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

from connectors.base import load_registry
from connectors.destinations import webhook
from connectors.destinations.webhook import ChatWebhookDestination, OutboundWebhookDestination
from connectors.sandbox.providers import SandboxProviders
from hub.destination_settings import webhook_destinations
from hub.errors import ConfigError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery, PlannedDelivery, SendResult
from hub.settings import HubSettings
from hub.store import outbox
from tests.conftest import make_settings, serve_hub, wait_for
from tests.test_webhook_destination import SECRET, SENDERS, RawReceiver, delivery, to

TOKEN = "s3cr3t-receiver-token"
# Answers that are not HTTP, with what aiohttp says of each: its error names the URL it was sending to, query and all.
NOT_HTTP = {
    "bad-status-line": (b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        "Bad status line: Invalid status code: b'HTTP/1.1 2OO OK'"),
    "bad-content-length": (b"HTTP/1.1 503 Busy\r\nContent-Length: many\r\nConnection: close\r\n\r\n",
                           "Invalid character in Content-Length: b'Content-Length: many'"),
    "header-over-100-kb": (b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"x" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n",
                           "Got more than 102400 bytes"),
}


def sending(answer: bytes) -> Callable[[socket.socket], None]:
    """A `RawReceiver` answer: these bytes, as they are."""
    return lambda connection: connection.sendall(answer)


def test_a_token_in_the_webhook_url_query_never_reaches_the_delivery_log_through_an_error_message(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """The request summary hid `?token=`, but an answer that is not HTTP made aiohttp (the engine's client) raise an
    error naming the whole URL, which became the attempt's `error_message` and the delivery's `last_error`: shown
    to every API key with the `read` scope by GET /api/deliveries, the console and the CLI."""
    with RawReceiver(sending(NOT_HTTP["bad-status-line"][0])) as receiver:
        settings = make_settings(tmp_path, **{
            **sandbox.settings_overrides(), "chat_webhook_url": f"{receiver.url}?token={TOKEN}", "delivery_max_attempts": 1,
        })
        planned = PlannedDelivery(
            delivery_id="0b8f0a4e-3c1d-5f7a-8e9b-1c2d3e4f5a6b", decision_id="d-1", profile_id="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
            channel="chat", destination_id="chat_webhook", target="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
            content={"body": "Need a hand comparing?", "template": "c.j2", "rule_id": "comparison_hesitation", "params": {}},
        )
        with serve_hub(settings, sandbox) as running:
            with running.hub.store.write() as connection:
                outbox.plan(connection, [planned], datetime.now(timezone.utc))
            running.hub.delivery_wake.set()
            wait_for(lambda: running.admin("/api/deliveries", channel="chat")["deliveries"][0]["attempt_log"])
            running.settle()
            [logged] = running.admin("/api/deliveries", channel="chat")["deliveries"]
    [attempt] = logged["attempt_log"]
    assert attempt["error_class"] == "network.ClientResponseError"
    assert TOKEN not in str(logged), (attempt["error_message"], logged["last_error"])
    assert attempt["error_message"] == "the webhook's answer is not valid HTTP: " + NOT_HTTP["bad-status-line"][1]


@pytest.mark.parametrize("send", SENDERS)
@pytest.mark.parametrize("answer", NOT_HTTP)
def test_neither_client_names_the_url_query_in_its_failure_message(send: str, answer: str) -> None:
    """The same leak at the destination: the engine's client's failure message carried the URL's query token (the
    blocking client's never named the URL). It still says what was wrong with the answer, and no longer starts
    with aiohttp's "400", which read as the receiver's status."""
    sent, reason = NOT_HTTP[answer]
    with RawReceiver(sending(sent)) as receiver:
        with pytest.raises(DeliveryError) as raised:
            SENDERS[send](to(f"{receiver.url}?token={TOKEN}"))
    message = raised.value.failure.message
    assert TOKEN not in message, message
    if send == "async":
        assert message.startswith(f"the webhook's answer is not valid HTTP: {reason}"), message


def test_a_url_in_any_client_error_is_shown_with_its_query_hidden() -> None:
    """Whatever else names the URL: aiohttp's connect timeout says "Connection timeout to host <url>" (client.py),
    which went into the log query token and all."""
    url = f"http://127.0.0.1:9/hooks/chat?token={TOKEN}"
    with pytest.raises(RetryableDeliveryError) as raised, webhook._transport_errors():
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}")
    failure = raised.value.failure
    assert failure.error_class == "network.timeout"
    assert failure.message == (
        "webhook timed out: ConnectionTimeoutError('Connection timeout to host http://127.0.0.1:9/hooks/chat?token=***"
    )  # what followed the URL, to the first blank, is hidden with the query's value: it might have been part of it


@pytest.mark.parametrize("send", SENDERS)
def test_a_200_with_a_response_header_over_8_kb_is_delivered_not_retried(send: str) -> None:
    """The status decides. aiohttp refused any header line over 8190 bytes (a CDN's long Content-Security-Policy or
    Set-Cookie), filed as retryable `network.ClientResponseError`: an accepted message was sent again until it was
    dead-lettered, where the blocking client called the same answer delivered."""
    long_header = b"Content-Security-Policy: default-src 'self'; " + b"script-src https://cdn.example.com " * 300
    answer = b"HTTP/1.1 200 OK\r\n" + long_header + b'\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{"ok":true}'
    with RawReceiver(sending(answer)) as receiver:
        assert SENDERS[send](to(receiver.url)).status == "delivered"
        assert len(receiver.heads) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [("https://chat.example.com:84430x/hooks", "Invalid port: '84430x'"), ("https://[::1/hooks", "Invalid port"),
     ("http://0177.0.0.1/hooks", "Invalid IPv4 address: '0177.0.0.1'"),
     ("https://chat.example.com:99999/hooks", "port 99999 is out of range; use 1 to 65535")],
    ids=["bad-port", "unclosed-bracket", "octal-ip", "port-out-of-range"],
)
def test_a_malformed_webhook_url_is_a_config_error_naming_the_setting(url: str, reason: str) -> None:
    """The URL pattern looks only at the scheme and the host's first characters; httpx then refused the URL in the
    destination's constructor with a bare httpx.InvalidURL, which start-up does not gather: `touchhub serve` and
    `worker` died with a traceback naming no setting. A port past 65535, which httpx takes, failed every send of
    the engine's client instead (yarl refuses it)."""
    settings = HubSettings(_env_file=None, chat_webhook_url=url, chat_webhook_secret=SECRET)  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as raised:
        webhook_destinations(load_registry(), settings)
    [problem] = raised.value.problems
    assert problem.startswith("HUB_CHAT_WEBHOOK_*: url: ") and reason in problem, problem


def test_a_whitespace_previous_secret_ends_the_rotation_as_an_empty_one_does() -> None:
    """`hub.signing_secrets.in_use` takes a blank previous secret (" ") as none, as an empty one: WebhookConfig took
    "" but refused " " ("must start with 'whsec_'"), so HUB_CHAT_WEBHOOK_PREVIOUS_SECRET emptied to a blank (a
    templated env file, a Kubernetes secret) stopped the hub at start."""
    target = to("http://127.0.0.1:9/hooks", previous_secret=" ")
    request = target.signed_request(delivery(), target.pinned_target())
    target.close()
    assert len(request.headers["webhook-signature"].split(" ")) == 1


@pytest.mark.parametrize("event_type", [42, None, "", "chat offer!", "chat..offer", ".chat"],
                         ids=["number", "null", "empty", "spaces", "empty-segment", "leading-stop"])
def test_a_params_type_that_is_no_event_type_is_refused_when_the_rules_load(event_type: object) -> None:
    """`params.type` becomes the payload's `type`, which receivers dispatch on (Standard Webhooks: full-stop
    delimited identifiers of [a-zA-Z0-9_]). Unchecked, `type: 42` or `type: null` loaded, and every message of the
    rule went out with a `type` no receiver routes."""
    [problem] = ChatWebhookDestination.check_params({"type": event_type})
    assert problem.startswith("params.type: ") and "chat.coupon" in problem, problem
    assert ChatWebhookDestination.check_params({"type": "chat.coupon_v2"}) == ChatWebhookDestination.check_params({}) == []


async def deliver_on_a_loop(target: OutboundWebhookDestination, sent: Delivery) -> SendResult:
    try:
        return await target.deliver_async(sent)
    finally:
        await target.close_async()


@pytest.mark.parametrize("send", ["sync", "async"])
def test_a_delivery_whose_params_type_is_no_event_type_is_refused_not_sent(send: str) -> None:
    """A delivery planned before its rule's params were checked (and its replays) sends the params stored with it:
    it went out with `"type": 42`; now it fails for good, naming the param, and nothing is sent."""
    sent = delivery(params={"type": 42})
    with RawReceiver(sending(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as receiver:
        target = to(receiver.url)
        with pytest.raises(PermanentDeliveryError) as raised:
            target.deliver(sent) if send == "sync" else asyncio.run(deliver_on_a_loop(target, sent))
        assert receiver.heads == []
    assert raised.value.failure.error_class == "webhook.bad_params"
    assert raised.value.failure.message.startswith("params.type: 42 ")


@pytest.mark.parametrize("send", SENDERS)
@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://chat.example.com/v2/hooks/chat?token=abc", "https://chat.example.com/v2/hooks/chat?token=***"),
        ("/v2/hooks/chat", "http://127.0.0.1:{port}/v2/hooks/chat"),
        ("http://[oops/hooks", None),
    ],
    ids=["absolute-with-token", "relative", "no-url"],
)
def test_a_redirect_answer_is_logged_with_its_location(send: str, location: str, shown: str | None) -> None:
    """Redirects are not followed (past the SSRF guard), and Standard Webhooks asks the sender's operator to update
    the URL instead; the attempt logged only "webhook answered 308 Permanent Redirect", so ops could not see what
    to change HUB_CHAT_WEBHOOK_URL to. Shown whole (a relative one resolved), with its query's values hidden; one
    that is no URL is left out, the answer still a permanent 308."""
    answer = f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with RawReceiver(sending(answer.encode())) as receiver:
        with pytest.raises(PermanentDeliveryError) as raised:
            SENDERS[send](to(receiver.url))
    failure = raised.value.failure
    assert failure.error_class == "http.308"
    if shown is None:
        assert failure.message == "webhook answered 308 Permanent Redirect"
        assert failure.response_summary == {"status": 308, "body": ""}
        return
    moved = shown.format(port=receiver.url.split(":")[2].split("/")[0])
    assert failure.response_summary == {"status": 308, "body": "", "location": moved}
    assert failure.message == (
        f"webhook answered 308 Permanent Redirect to {moved}; set the webhook's URL to it if the receiver moved"
    )


def test_an_empty_webhook_url_means_no_such_destination() -> None:
    """.env.example: "Unset: the destination does not exist", and an empty value is unset everywhere else in the hub
    (HUB_SALESFORCE_CONSUMER_KEY, HUB_PUBLIC_BASE_URL, the previous secrets). HUB_CHAT_WEBHOOK_URL= (emptied to turn
    chat offers off, or `${CHAT_URL:-}` in a compose file) stopped the hub with "url: String should match pattern"."""
    settings = HubSettings(  # type: ignore[call-arg]
        _env_file=None, chat_webhook_url="", chat_webhook_secret="", outbound_webhook_url="", outbound_webhook_secret="",
    )
    assert webhook_destinations(load_registry(), settings) == {}
