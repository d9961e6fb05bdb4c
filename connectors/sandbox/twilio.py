"""A fake of Twilio's Messages REST API (2010-04-01) that the real `twilio` library talks to.

The library reaches it through
`connectors.destinations.twilio_transport.BaseUrlHttpClient`, so request
building, Basic auth and error parsing stay the library's own. The fake checks
what Twilio checks before accepting a message, answers in Twilio's JSON shapes,
records every request and can be told to fail the next ones.

Twilio behaviour reproduced here (https://www.twilio.com/docs/messaging/api/message-resource,
https://www.twilio.com/docs/api/errors):

* Request bodies are form-encoded. A JSON body carries no fields for Twilio,
  which is why it answers one with 21604 ('To' required); so does the fake.
* Errors are ``{"code", "message", "more_info", "status"}``. Most refusals are
  HTTP 400; only the code says whether trying again can help.
* Dates are RFC 2822 strings and counts (``num_segments``, ``num_media``) are
  strings; ``price`` stays null until the carrier reports it.

* Status callbacks and inbound-message webhooks are form-encoded POSTs signed
  with the auth token (``X-Twilio-Signature``, HMAC-SHA1 over the URL and the
  sorted fields). The fake posts them when told to (`post_status`,
  `post_inbound`), so a test decides when a message is "delivered".

Request recording, injected faults and the ``/_sandbox/`` control endpoints
are the ones every fake shares (`connectors.sandbox.recording`); only the
error shape and the numeric codes are Twilio's.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
from pydantic import Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from connectors.sandbox.recording import Fault, RecordingFake, basic_credentials, control_routes, fault_answer
from hub.clock import utcnow

SANDBOX_ACCOUNT_SID = "AC" + "5a" * 16
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"
API_VERSION = "2010-04-01"
E164 = re.compile(r"\+[1-9]\d{6,14}")
MAX_BODY_CHARS = 1600

# GSM 03.38: the basic set costs one 7-bit unit, the extension set two (escape
# + char). Anything else switches the whole message to UCS-2.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


class TwilioFault(Fault):
    """A `Fault` whose code is Twilio's: a number (20429), or none at all, never a name."""

    code: int | None = Field(None, description="Twilio's error code, such as 20429.")  # type: ignore[assignment]


class FakeTwilio(RecordingFake):
    """One fake Twilio account: its credentials, sent messages and their status callbacks.

    The server thread writes while tests and the demo read from theirs, so every
    public view is a copy taken under the lock. Put numbers that replied STOP
    into `unsubscribed` before sending; Twilio answers them with 21610.

    Each of `requests` is ``{"method", "path", "query", "form", "auth_user", "status", "fault"}``;
    a form field sent several times (``MediaUrl``) is a list, others a string.
    """

    def __init__(self, account_sid: str = SANDBOX_ACCOUNT_SID, auth_token: str = SANDBOX_AUTH_TOKEN) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.unsubscribed: set[str] = set()
        # Status callbacks, (status, error code), posted before a create is answered: as the hub sees them when
        # Twilio's report outruns the worker's record of the send.
        self.reports_before_answer: list[tuple[str, int | None]] = []
        self._messages: list[dict[str, Any]] = []
        self._status_callbacks: dict[str, str] = {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The Message resources created so far, oldest first, exactly as returned."""
        with self._lock:
            return copy.deepcopy(self._messages)

    @property
    def status_callbacks(self) -> dict[str, str]:
        """``StatusCallback`` URLs by message sid; Twilio keeps them but never returns them."""
        with self._lock:
            return dict(self._status_callbacks)

    @property
    def message_count(self) -> int:
        with self._lock:
            return len(self._messages)

    def state(self) -> dict[str, Any]:
        return {"messages": self.messages, "status_callbacks": self.status_callbacks,
                "unsubscribed": sorted(self.unsubscribed)}

    def fail_next(self, status: int, *, code: int | None = None, **fields: Any) -> None:  # type: ignore[override]
        """Answer the next API requests with this Twilio error instead of handling them.

        `fields` are the rest of `Fault`: `message`, `times`, `retry_after`, `delay_seconds`.

        Raises:
            pydantic.ValidationError: for a status outside 400-599 or `times` below 1.
        """
        self.add_fault(TwilioFault(status=status, code=code, **fields))

    def reset(self) -> None:
        """Forget messages, requests, queued faults, unsubscribed numbers and reports to post before answering."""
        super().reset()
        with self._lock:
            self._messages.clear()
            self._status_callbacks.clear()
            self.unsubscribed.clear()
            self.reports_before_answer.clear()

    def post_status(self, sid: str, status: str, *, error_code: int | None = None) -> httpx.Response:
        """Post a status callback for message `sid` to its StatusCallback URL, as Twilio does.

        The stored message takes the new status (and error code) first, so a
        fetch afterwards agrees with the callback.
        """
        with self._lock:
            message = next(m for m in self._messages if m["sid"] == sid)
            message.update(status=status, error_code=error_code)
            url = self._status_callbacks[sid]
            fields = {
                "AccountSid": self.account_sid,
                "ApiVersion": API_VERSION,
                "From": message["from"] or "",
                "MessageSid": sid,
                "MessageStatus": status,
                "SmsSid": sid,
                "SmsStatus": status,
                "To": message["to"],
            }
        if error_code is not None:
            fields["ErrorCode"] = str(error_code)
        return self.post_signed(url, fields)

    def post_inbound(
        self, url: str, sender: str, body: str, to: str = "+15005550006", *, sid: str | None = None
    ) -> httpx.Response:
        """Post an inbound SMS from `sender` to the messaging webhook `url`, as Twilio does; `sid` posts a message
        again, as Twilio retries a webhook it could not deliver (the same MessageSid, signed the same)."""
        sid = sid or "SM" + uuid.uuid4().hex
        fields = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "Body": body,
            "From": sender,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": to,
        }
        return self.post_signed(url, fields)

    def post_signed(self, url: str, fields: dict[str, str]) -> httpx.Response:
        signature = RequestValidator(self.auth_token).compute_signature(url, fields)
        return httpx.post(url, data=fields, headers={"X-Twilio-Signature": signature}, timeout=10)

    def _store(self, message: dict[str, Any], status_callback: str) -> None:
        with self._lock:
            self._messages.append(message)
            if status_callback:
                self._status_callbacks[message["sid"]] = status_callback

    def _find(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            return next((copy.deepcopy(m) for m in self._messages if m["sid"] == sid), None)


@dataclass(frozen=True)
class _Call:
    """What an API handler needs from one request, read once by `create_app`."""

    path: str
    params: dict[str, str]
    form: dict[str, list[str]]
    credentials: tuple[str, str] | None

    def field(self, name: str) -> str:
        return self.form.get(name, [""])[0]


def create_app(fake: FakeTwilio) -> Starlette:
    """The ASGI app serving `fake`: Twilio's Messages endpoints plus ``/_sandbox/`` controls."""

    def authenticate(call: _Call) -> Response | None:
        expected = (fake.account_sid, fake.auth_token)
        if call.credentials != expected or call.params["account_sid"] != fake.account_sid:
            return twilio_error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        return None

    def create_message(call: _Call) -> Response:
        if denied := authenticate(call):
            return denied
        to, sender, service = call.field("To"), call.field("From"), call.field("MessagingServiceSid")
        body, media = call.field("Body"), call.form.get("MediaUrl", [])
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not (sender or service):
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if not (body or media or call.field("ContentSid")):
            return twilio_error(400, 21602, "Message body is required.")
        if not E164.fullmatch(to):
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if len(body) > MAX_BODY_CHARS:
            return twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if to in fake.unsubscribed:
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        message = message_resource(fake.account_sid, to, sender, service, body, media)
        answer = dict(message)
        fake._store(message, call.field("StatusCallback"))
        if call.field("StatusCallback"):
            for status, error_code in fake.reports_before_answer:
                fake.post_status(message["sid"], status, error_code=error_code)
        return JSONResponse(answer, status_code=201)

    def fetch_message(call: _Call) -> Response:
        if denied := authenticate(call):
            return denied
        message = fake._find(call.params["sid"])
        if message is None:
            return twilio_error(404, 20404, f"The requested resource {call.path} was not found")
        return JSONResponse(message)

    async def serve(request: Request, handler: Callable[[_Call], Response], *, injectable: bool) -> Response:
        call = _Call(request.url.path, dict(request.path_params), await read_form(request), basic_credentials(request))
        fault = fake._next_fault() if injectable else None
        if fault is not None:
            response = await fault_answer(fault, lambda f, headers: twilio_error(f.status, f.code, f.message, headers))
        else:
            response = handler(call)
        fake._record({
            "method": request.method,
            "path": call.path,
            "query": dict(request.query_params),
            "form": {name: values[0] if len(values) == 1 else values for name, values in call.form.items()},
            "auth_user": call.credentials[0] if call.credentials else None,
            "status": response.status_code,
            "fault": fault is not None,
        })
        return response

    def api(handler: Callable[[_Call], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await serve(request, handler, injectable=True)

        return endpoint

    async def unknown_route(request: Request, exc: Exception) -> Response:
        # Unknown paths are recorded but never consume an injected fault: a
        # wrong URL must show up as Twilio's 404, not hide behind a fake 503.
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            refusal = twilio_error(405, 20004, "Method not allowed", exc.headers)
            return await serve(request, lambda _call: refusal, injectable=False)
        message = f"The requested resource {request.url.path} was not found"
        return await serve(request, lambda _call: twilio_error(404, 20404, message), injectable=False)

    accounts = f"/{API_VERSION}/Accounts/{{account_sid}}"
    routes = [
        Route(f"{accounts}/Messages.json", api(create_message), methods=["POST"]),
        Route(f"{accounts}/Messages/{{sid}}.json", api(fetch_message), methods=["GET"]),
        *control_routes(fake, fake.state, TwilioFault),
    ]
    return Starlette(routes=routes, exception_handlers={404: unknown_route, 405: unknown_route})


def message_resource(
    account_sid: str, to: str, sender: str, service: str, body: str, media: list[str]
) -> dict[str, Any]:
    """A new outbound Message resource in Twilio's JSON shape."""
    sid = ("MM" if media else "SM") + uuid.uuid4().hex
    now = format_datetime(utcnow().replace(microsecond=0))
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender or None,
        "messaging_service_sid": service or None,
        "num_media": str(len(media)),
        # A Messaging Service picks the sender later, so Twilio reports 0
        # segments and status "accepted" until it has.
        "num_segments": "0" if service else str(count_segments(body)),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "accepted" if service else "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


def count_segments(body: str) -> int:
    """SMS segments for `body`: 160/153 GSM-7 units per segment, or 70/67 UCS-2 units."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body):
        units, single, part = sum(2 if ch in GSM7_EXTENSION else 1 for ch in body), 160, 153
    else:
        units, single, part = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else -(-units // part)


def twilio_error(status: int, code: int | None, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def read_form(request: Request) -> dict[str, list[str]]:
    """The form fields of `request`; any other content type counts as no fields, as at Twilio."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)

