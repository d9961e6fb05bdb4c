"""Signed outbound webhooks (Standard Webhooks): chat-widget offers and CDP audience tags.

Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md

Each delivery is one JSON POST carrying three headers:

* ``webhook-id``: the delivery's idempotency key, the same on every retry and
  replay, so the receiver can drop duplicates;
* ``webhook-timestamp``: integer Unix seconds, for the receiver's replay window;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
  keyed with the base64-decoded part of a ``whsec_`` secret. While a secret is
  rotated (`previous_secret` set), a second ``v1,`` signature by the old one
  follows, space-separated as the spec allows, so a receiver verifies with
  whichever secret it has and may switch when it likes (as Svix does).

Redirects are not followed: a 3xx could point anywhere, past the SSRF guard. Its Location is logged (its
query's values hidden), so ops see what to set the URL to, as Standard Webhooks asks. A 410 Gone is the
receiver saying it wants no more webhooks at this URL (Standard Webhooks: disable the endpoint), so it parks
the delivery as a refused setup does (dead-lettered, not failed), and the engine parks the later deliveries to
the receiver without a call: once ops have fixed the URL, one `touchhub deliveries replay --all` sends them all.

A receiver's URL may carry its credential (``?token=...``): the delivery log
shows it through `shown_url`, and failure messages too, since aiohttp's
errors name the URL they were sending to.

The receiver's status decides the outcome; of its body the delivery log keeps
only an excerpt, so only that much is read (`answer_excerpt`), and only briefly
once the status is in: an answer streamed slowly, or a large or compressed one,
costs neither time nor memory, and an accepted delivery is never retried for it.

The request is built and signed once (`signed_request`) and sent by one of
two clients: httpx from `send` (blocking callers, the CLI and tests) or
aiohttp from `send_async` (the delivery engine's event loop). aiohttp, not
`httpx.AsyncClient`, because httpcore's async connection pool spends
O(connections) of CPU per request (encode/httpx#3215): measured in
`bench/delivery.py`, it sent fewer webhooks a second than the threaded sync
client, while aiohttp sends several times more.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urljoin

import aiohttp
import httpx
from pydantic import BaseModel

from connectors.base import NETWORK_ERRORS, Destination
from connectors.destinations.answer_excerpt import RESPONSE_BODY_SECONDS, read_start, read_start_async
from connectors.destinations.aiohttp_pool import pooled_session
from connectors.destinations.json_form import json_problems
from connectors.destinations.webhook_config import WebhookConfig, signature, signing_key
from connectors.destinations.ssrf import AddressRefused, PinnedTarget, SsrfGuard, needs_lookup
from hub.clock import utcnow
from hub.errors import DeliveryError, DeliveryFailure, GoneDeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import ENGINE_KEYS, Delivery, SendResult
from hub.retry import outcome_for_status, parse_retry_after
from hub.secret_urls import shown_url
from hub.settings import MAX_DELIVERY_CONCURRENCY
from hub.signing_secrets import in_use

# The rest of a delivery's content is rendered message parts; these are the hub's own (what routing marks a
# message with for the delivery engine stays in the hub).
CONTENT_KEYS = ("template", "rule_id", "params", *ENGINE_KEYS)
# The body's encoder, built once: `json.dumps` with any non-default option builds one per call. Its output is
# what `json.dumps(payload, separators=(",", ":"), sort_keys=True)` gives, byte for byte (the signed bytes), never
# NaN or Infinity (a ValueError, which `signed_request` names as `check_params` does).
_BODY_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
# An event type as Standard Webhooks recommends it: full-stop delimited identifiers of [a-zA-Z0-9_].
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
# A URL inside an error's text, to the first blank: whatever quote or bracket follows it is taken as part of it,
# so a query value that holds one is hidden whole.
_URL_IN_TEXT = re.compile(r"https?://\S+")
GONE = 410
# The receiver's statuses whose meaning differs from the hub's table: 410 parks the endpoint (an auth outcome:
# dead-lettered until replayed, the later deliveries with it, without a call), as Standard Webhooks asks a sender to
# stop sending to it.
STATUS_OUTCOMES: Mapping[int, type[DeliveryError]] = {GONE: GoneDeliveryError}


@dataclass(frozen=True)
class SignedRequest:
    """One signed POST, addressed to the IP address the SSRF guard vetted; either client sends it as it is."""

    target: PinnedTarget
    body: bytes
    headers: dict[str, str]


@contextmanager
def _transport_errors() -> Iterator[None]:
    """A failure to reach the receiver, from either client, as the same retryable error class."""
    try:
        yield
    except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
        raise _network_failure("network.timeout", f"webhook timed out: {exc!r}") from exc
    except (httpx.ConnectError, aiohttp.ClientConnectorError) as exc:
        raise _network_failure("network.ConnectError", f"could not reach the webhook: {exc}") from exc
    except aiohttp.ClientResponseError as exc:  # str(exc) is "400, message=..., url=...": no status the receiver sent
        reason = _one_line(exc.message)
        raise _network_failure("network.ClientResponseError", f"the webhook's answer is not valid HTTP: {reason}") from exc
    except NETWORK_ERRORS as exc:
        raise _network_failure(f"network.{type(exc).__name__}", f"could not reach the webhook: {exc}") from exc


def _network_failure(error_class: str, message: str) -> RetryableDeliveryError:
    """A retryable failure, its message with every URL in it as the delivery log shows URLs (`shown_url`): aiohttp's
    errors name the URL they were sending to, and the log is read by every API key with the `read` scope."""
    shown = _URL_IN_TEXT.sub(lambda found: shown_url(found.group()), message)
    return RetryableDeliveryError(DeliveryFailure(error_class, shown))


def _one_line(text: str) -> str:
    """A parser's multi-line error on one line, for the log's tables: without the caret under the bad byte."""
    return " ".join(word for word in text.split() if word != "^")


class OutboundWebhookDestination(Destination):
    """POSTs ``{"type", "timestamp", "data"}`` to one receiver. Override `event_type` per use."""

    slug = "outbound_webhook"
    title = "Outbound webhook (Standard Webhooks signatures)"
    docs_url = "https://www.standardwebhooks.com/"
    channel = "webhook"
    event_type: ClassVar[str] = "profile.decision"
    Config = WebhookConfig

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, WebhookConfig)
        self.settings = config
        self._keys = [signing_key(secret) for secret in in_use(config.secret, config.previous_secret)]
        self._guard = SsrfGuard(config.allowed_networks)
        # As many kept-alive connections as the delivery engine has sends in flight, so none is re-opened per send.
        limits = httpx.Limits(max_connections=MAX_DELIVERY_CONCURRENCY, max_keepalive_connections=MAX_DELIVERY_CONCURRENCY)
        self._client = httpx.Client(timeout=config.timeout_seconds, follow_redirects=False, limits=limits)
        self._session: aiohttp.ClientSession | None = None  # opened on the event loop that first sends
        self._blocking_lookup = needs_lookup(config.url)
        self._body_seconds = min(RESPONSE_BODY_SECONDS, config.timeout_seconds)
        self._shown_url = shown_url(config.url)  # the delivery log's, credentials hidden

    def payload(self, delivery: Delivery) -> dict[str, Any]:
        """The event body; `params.type` in the rule's action overrides the event type.

        Its `timestamp` is when the event occurred (Standard Webhooks): when the hub planned the delivery, just
        after its decision. Never the send time: every retry and replay of the message (one webhook-id) sends the
        same body; only the `webhook-timestamp` header is the attempt's.
        """
        content = delivery.content
        params = content.get("params") or {}
        return {
            "type": self._type_of(params),
            "timestamp": delivery.created_at.isoformat(),
            "data": {
                "delivery_id": delivery.delivery_id,
                "profile_id": delivery.target,
                "rule_id": content.get("rule_id"),
                "template": content.get("template"),
                "message": {key: value for key, value in content.items() if key not in CONTENT_KEYS},
                "params": params,
            },
        }

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        """The type problem (`_type_problem`), then each param without a JSON form (`json_problems`): the body
        carries them all. Asked when the rules load; a send asks the body's encoder instead (`signed_request`)."""
        problems = json_problems(params, "params.")
        type_problem = cls._type_problem(params)
        return [type_problem, *problems] if type_problem else problems

    @classmethod
    def _type_problem(cls, params: Mapping[str, Any]) -> str | None:
        """`params.type`, when given, must be an event type (Standard Webhooks): receivers dispatch on it, and a
        number, null or "chat offer!" is one none routes."""
        event_type = params.get("type", cls.event_type)
        if isinstance(event_type, str) and _EVENT_TYPE.fullmatch(event_type):
            return None
        return (f"params.type: {event_type!r} is not an event type; write names of letters, digits and _ joined by "
                f"full stops (e.g. chat.coupon), or leave it out to send {cls.event_type!r}")

    def _type_of(self, params: Mapping[str, Any]) -> str:
        """The payload's `type`; PermanentDeliveryError for one `_type_problem` refuses (a delivery planned before
        its rule was checked, or its replay, sends the params stored with it)."""
        if problem := self._type_problem(params):
            raise PermanentDeliveryError(DeliveryFailure("webhook.bad_params", problem))
        return params.get("type", self.event_type)

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        return {"url": self._shown_url, "webhook_id": delivery.delivery_id, "type": self._type_of(delivery.content.get("params") or {})}

    def pinned_target(self) -> PinnedTarget:
        """Where to send, on the address the SSRF guard allows (DNS asked unless a fresh vetted answer is kept);
        DeliveryError otherwise."""
        try:
            return self._guard.pin(self.settings.url)
        except AddressRefused as exc:
            raise PermanentDeliveryError(DeliveryFailure("ssrf.address_refused", str(exc))) from exc
        except OSError as exc:
            raise RetryableDeliveryError(DeliveryFailure("network.dns", f"cannot resolve the webhook host: {exc}")) from exc

    def signed_request(self, delivery: Delivery, target: PinnedTarget) -> SignedRequest:
        """The POST for `delivery` to `target`, signed now. It asks for an uncompressed answer: only an excerpt of
        it is kept, and inflating one is work (and memory) the receiver decides. Params stored without a JSON form
        (planned before their rule was checked) fail for good, named as `check_params` names them."""
        payload = self.payload(delivery)
        try:
            body = _BODY_ENCODER.encode(payload).encode()
        except ValueError as exc:
            problems = json_problems(payload["data"]["params"], "params.")
            raise PermanentDeliveryError(DeliveryFailure("webhook.bad_params", "; ".join(problems) or str(exc))) from None
        timestamp = int(utcnow().timestamp())
        headers = {
            **target.headers,
            "accept-encoding": "identity",
            "content-type": "application/json",
            "webhook-id": delivery.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signature(key, delivery.delivery_id, timestamp, body) for key in self._keys),
        }
        return SignedRequest(target, body, headers)

    def send(self, delivery: Delivery) -> SendResult:
        """POST to the host's first vetted address; one that refuses the connection (nothing was sent) passes the
        same signed request on to the next, so one receiver down behind a host name loses nothing."""
        request = self.signed_request(delivery, self.pinned_target())
        *earlier, last = request.target.urls
        with _transport_errors():
            for url in earlier:
                with suppress(httpx.ConnectError):
                    return self._post(delivery, request, url)
            return self._post(delivery, request, last)

    def _post(self, delivery: Delivery, request: SignedRequest, url: httpx.URL) -> SendResult:
        with self._client.stream(
            "POST", url, content=request.body, headers=request.headers, extensions=request.target.extensions
        ) as response:
            excerpt = read_start(response, self._body_seconds)
        return self._answer(delivery, response.status_code, response.reason_phrase, excerpt, response.headers)

    async def send_async(self, delivery: Delivery) -> SendResult:
        """`send` on the engine's client: each vetted address in turn while they refuse the connection."""
        target = self._guard.vetted(self.settings.url)
        if target is None:  # resolving a host name blocks, so off the event loop
            target = await asyncio.to_thread(self.pinned_target) if self._blocking_lookup else self.pinned_target()
        request = self.signed_request(delivery, target)
        *earlier, last = target.urls
        with _transport_errors():
            for url in earlier:
                with suppress(aiohttp.ClientConnectorError):
                    return await self._post_async(delivery, request, url)
            return await self._post_async(delivery, request, last)

    async def _post_async(self, delivery: Delivery, request: SignedRequest, url: httpx.URL) -> SendResult:
        async with self._async_session().post(
            str(url), data=request.body, headers=request.headers, allow_redirects=False,
            server_hostname=request.target.extensions.get("sni_hostname"), auto_decompress=False,
        ) as response:
            excerpt = await read_start_async(response, self._body_seconds)
        return self._answer(delivery, response.status, response.reason or "", excerpt, response.headers)

    def _answer(
        self, delivery: Delivery, status: int, reason: str, excerpt: str, headers: Mapping[str, str]
    ) -> SendResult:
        """The receiver's answer: delivered on 2xx, otherwise the error its status means; `excerpt` is its body's,
        `headers` either client's (both look names up in any case)."""
        summary: dict[str, Any] = {"status": status, "body": excerpt}
        if 200 <= status < 300:
            return SendResult(status="delivered", provider_message_id=delivery.delivery_id, response_summary=summary)
        raise outcome_for_status(status, STATUS_OUTCOMES)(
            DeliveryFailure(
                error_class=f"http.{status}",
                message=f"webhook answered {status} {reason}{self._what_to_do(status, headers, summary)}",
                retry_after=parse_retry_after(headers.get("retry-after"), utcnow()),
                response_summary=summary,
            )
        )

    def _what_to_do(self, status: int, headers: Mapping[str, str], summary: dict[str, Any]) -> str:
        """What ops should do about a refusal whose status says the receiver moved or left ('' for others): the
        log's reader must know what to change. A redirect's Location goes into `summary` too."""
        if status == GONE:
            return (
                f": the receiver wants no more webhooks at this URL, so the delivery is parked; set "
                f"HUB_{self.destination_id.upper()}_URL to its new endpoint, or stop routing to it, then run "
                f"`touchhub deliveries replay --all --destination {self.destination_id}`"
            )
        location = self._moved_to(headers) if 300 <= status < 400 else None
        if location is None:
            return ""
        summary["location"] = location
        return f" to {location}; set the webhook's URL to it if the receiver moved"

    def _moved_to(self, headers: Mapping[str, str]) -> str | None:
        """Where a redirect points, whole (a relative Location resolved against the URL) and as the log shows URLs;
        None without one, or with one that is no URL."""
        location = headers.get("location")
        if not location:
            return None
        try:
            return shown_url(urljoin(self.settings.url, location))
        except ValueError:  # "http://[oops": urlsplit refuses it
            return None

    def _async_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = pooled_session(self.settings.timeout_seconds)
        return self._session

    def close(self) -> None:
        self._client.close()

    async def close_async(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ChatWebhookDestination(OutboundWebhookDestination):
    """A chat-widget offer: the widget's backend opens a proactive chat for the profile."""

    slug = "chat_webhook"
    title = "Chat widget webhook (Standard Webhooks signatures)"
    channel = "chat"
    event_type = "chat.offer"
