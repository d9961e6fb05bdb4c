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

The ``/_sandbox/`` endpoints let another process inspect and steer the fake.
They are not Twilio's and are not recorded.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

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


class FaultSpec(BaseModel):
    """An error response to serve instead of handling the next `times` API requests.

    Also the JSON body accepted by ``POST /_sandbox/faults``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: int = Field(ge=400, le=599)
    code: int | None = None
    message: str = "Injected fault"
    times: int = Field(1, ge=1)
    retry_after: int | None = Field(None, ge=0, description="Seconds, sent as a Retry-After header.")


class FakeTwilio:
    """Thread-safe state of one fake Twilio account, shared by the server and the test.

    The server thread writes while tests and the demo read from theirs, so every
    public view is a copy taken under the lock. Put numbers that replied STOP
    into `unsubscribed` before sending; Twilio answers them with 21610.
    """

    def __init__(self, account_sid: str = SANDBOX_ACCOUNT_SID, auth_token: str = SANDBOX_AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.unsubscribed: set[str] = set()
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._status_callbacks: dict[str, str] = {}
        self._faults: deque[FaultSpec] = deque()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The Message resources created so far, oldest first, exactly as returned."""
        with self._lock:
            return copy.deepcopy(self._messages)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every API request received, faults and refusals included, oldest first.

        Each is ``{"method", "path", "query", "form", "auth_user", "status", "fault"}``;
        a form field sent several times (``MediaUrl``) is a list, others a string.
        """
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def status_callbacks(self) -> dict[str, str]:
        """``StatusCallback`` URLs by message sid; Twilio keeps them but never returns them."""
        with self._lock:
            return dict(self._status_callbacks)

    @property
    def message_count(self) -> int:
        with self._lock:
            return len(self._messages)

    def fail_next(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str = "Injected fault",
        times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` API requests with this Twilio error instead of handling them.

        Raises:
            pydantic.ValidationError: for a status outside 400-599 or `times` below 1.
        """
        self.add_fault(FaultSpec(status=status, code=code, message=message, times=times, retry_after=retry_after))

    def add_fault(self, fault: FaultSpec) -> None:
        with self._lock:
            self._faults.extend([fault] * fault.times)

    def reset(self) -> None:
        """Forget messages, requests, queued faults and unsubscribed numbers."""
        with self._lock:
            self._messages.clear()
            self._requests.clear()
            self._status_callbacks.clear()
            self._faults.clear()
            self.unsubscribed.clear()

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

    def post_inbound(self, url: str, sender: str, body: str, to: str = "+15005550006") -> httpx.Response:
        """Post an inbound SMS from `sender` to the messaging webhook `url`, as Twilio does."""
        sid = "SM" + uuid.uuid4().hex
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

    def _next_fault(self) -> FaultSpec | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

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
        fake._store(message, call.field("StatusCallback"))
        return JSONResponse(message, status_code=201)

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
        response = fault_response(fault) if fault else handler(call)
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

    async def sandbox_messages(_request: Request) -> Response:
        return JSONResponse(fake.messages)

    async def sandbox_requests(_request: Request) -> Response:
        return JSONResponse(fake.requests)

    async def sandbox_faults(request: Request) -> Response:
        try:
            fault = FaultSpec.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        fake.add_fault(fault)
        return JSONResponse(fault.model_dump(), status_code=201)

    async def sandbox_reset(_request: Request) -> Response:
        fake.reset()
        return Response(status_code=204)

    accounts = f"/{API_VERSION}/Accounts/{{account_sid}}"
    routes = [
        Route(f"{accounts}/Messages.json", api(create_message), methods=["POST"]),
        Route(f"{accounts}/Messages/{{sid}}.json", api(fetch_message), methods=["GET"]),
        Route("/_sandbox/messages", sandbox_messages, methods=["GET"]),
        Route("/_sandbox/requests", sandbox_requests, methods=["GET"]),
        Route("/_sandbox/faults", sandbox_faults, methods=["POST"]),
        Route("/_sandbox/reset", sandbox_reset, methods=["POST"]),
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


def fault_response(fault: FaultSpec) -> Response:
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
    return twilio_error(fault.status, fault.code, fault.message, headers)


async def read_form(request: Request) -> dict[str, list[str]]:
    """The form fields of `request`; any other content type counts as no fields, as at Twilio."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, separator, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if separator else None
