"""A fake of Firebase Cloud Messaging's HTTP v1 API and Google's OAuth token endpoint.

`firebase-admin` talks to it unchanged: the service-account key the fake
issues (`FakeFcm.service_account_key`) names the fake as its ``token_uri``,
so google-auth signs a JWT with the key and exchanges it here for an access
token; the FCM calls reach the fake through
`connectors.destinations.requests_transport.VendorAdapter`.

FCM behaviour reproduced here (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode,
https://developers.google.com/identity/protocols/oauth2/service-account#httprest):

* The token endpoint takes ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
  and an RS256 JWT whose ``iss`` is the service account, ``aud`` Google's
  token endpoint and ``scope`` includes Firebase messaging; it refuses anything else with
  400 ``invalid_grant`` / ``invalid_scope``.
* Errors are ``{"error": {"code", "message", "status", "details"}}``; the FCM
  reason is a ``google.firebase.fcm.v1.FcmError`` detail's ``errorCode``.
* A token whose app was uninstalled is 404 ``UNREGISTERED``; one an app
  registered with another Firebase project (another sender) is 403
  ``SENDER_ID_MISMATCH`` "SenderId mismatch". A malformed token
  is 400 ``INVALID_ARGUMENT`` "The registration token is not a valid FCM
  registration token" with only the FcmError detail, as FCM sends it
  (firebase/firebase-admin-java#1064, healthjoy/async-firebase#15); set
  `FakeFcm.token_violations` to add the ``google.rpc.BadRequest`` field
  violation on ``message.token`` FCM has also been seen sending. A reserved
  data key is ``INVALID_ARGUMENT`` with a violation on ``message.data``.
* A device sent to faster than FCM allows is 429 ``QUOTA_EXCEEDED``
  "Device message rate exceeded." with ``Retry-After`` (`rate_limited`).
* A message whose ``apns.headers`` hold an ``apns-collapse-id`` over 64
  bytes is 400 ``INVALID_ARGUMENT``, as APNs refuses it; ``android.collapse_key``
  and ``apns.headers`` that are not text are 400 as FCM's JSON parsing refuses
  them. `FakeFcm.shown` plays what a device's screen keeps: a notification with
  the ``android.notification.tag`` of one shown replaces it.
* ``android.ttl`` is a protobuf Duration in JSON, whole or fractional seconds
  and an ``s`` ("3600s", "0.5s"), from 0 to 2419200 s (28 days); anything else
  is 400 ``INVALID_ARGUMENT`` (FCM's "invalid TTL"). ``webpush.headers`` are
  text as ``apns.headers`` are. `FakeFcm.kept_for` reads a stored message's ttl.
* A message whose payload (data keys and values, notification title and
  body, in UTF-8) is over 4096 bytes is 400 ``INVALID_ARGUMENT`` "Android
  message is too big" with no field violation: nothing in it blames the
  token (https://github.com/firebase/firebase-admin-go/issues/580).

Injected faults apply to ``messages:send`` only, never to the token endpoint.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.sandbox.recording import (
    IssuedTokens,
    RecordingFake,
    bearer_token,
    control_routes,
    fault_answer,
    oauth_error,
)

SANDBOX_PROJECT_ID = "touchhub-sandbox"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always addresses its assertion to Google's token endpoint,
# whatever token_uri it posts it to; Google checks exactly that audience.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
MESSAGING_SCOPES = {"https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform"}
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
CANONICAL_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{32,4096}")
# "from", "message_type", "notification", and any word starting with "google" or "gcm".
RESERVED_DATA_KEY = re.compile(r"^(from|message_type|notification|google.*|gcm.*)$")
PAYLOAD_LIMIT = 4096
APNS_COLLAPSE_ID_BYTES = 64  # https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
# A google.protobuf.Duration as JSON: seconds, up to nine decimals, then "s".
DURATION = re.compile(r"(\d+)(\.\d{1,9})?s")
# 28 days: https://firebase.google.com/docs/cloud-messaging/customize-messages/setting-message-lifespan
MAX_TTL_SECONDS = 2_419_200


class FakeFcm(RecordingFake):
    """One fake Firebase project: its service accounts, access tokens, devices and sent messages.

    Put tokens of uninstalled apps into `unregistered`; FCM answers them with
    ``UNREGISTERED``. Put tokens of another Firebase project into
    `other_senders` (every token, to play a hub holding another project's
    key); FCM answers them with ``SENDER_ID_MISMATCH``. Put tokens into
    `rate_limited` for FCM's per-device rate limit (``QUOTA_EXCEEDED``). `token_violations`
    adds a field violation on ``message.token`` to the answer to a malformed
    token, which FCM usually leaves out. `expire_access_tokens` revokes every
    issued access token.
    """

    def __init__(self, project_id: str = SANDBOX_PROJECT_ID) -> None:
        super().__init__()
        self.project_id = project_id
        self.unregistered: set[str] = set()
        self.other_senders: set[str] = set()
        self.rate_limited: set[str] = set()
        self.token_violations = False
        self._public_keys: dict[str, Any] = {}
        self.access_tokens = IssuedTokens(lambda: "ya29.sandbox-" + secrets.token_urlsafe(32))
        self._messages: list[dict[str, Any]] = []

    def service_account_key(self, token_uri: str, client_email: str | None = None) -> dict[str, Any]:
        """A new service account's key file content, trusted by this fake only, whose token_uri is `token_uri`."""
        private_key = _throwaway_rsa_key()
        email = client_email or f"touchhub-{secrets.token_hex(4)}@{self.project_id}.iam.gserviceaccount.com"
        with self._lock:
            self._public_keys[email] = private_key.public_key()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Accepted messages, oldest first: ``{"name", "message"}`` as FCM would deliver them."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def shown(self, token: str) -> list[dict[str, Any]]:
        """The notifications the device of `token` shows, oldest first: one whose ``android.notification.tag`` is
        that of one shown replaces it in place, as Android's notification drawer does."""
        shown: dict[Any, dict[str, Any]] = {}
        for number, entry in enumerate(self.messages):
            message = entry["message"]
            if message.get("token") == token:
                tag = ((message.get("android") or {}).get("notification") or {}).get("tag")
                shown[tag if tag is not None else number] = message.get("notification") or {}
        return list(shown.values())

    @staticmethod
    def kept_for(message: dict[str, Any]) -> float | None:
        """How long FCM keeps `message` (as `messages` holds it) for an Android device that is off, in seconds;
        None when it set no ``android.ttl``, which FCM takes as its longest, 28 days."""
        ttl = (message.get("android") or {}).get("ttl")
        return None if ttl is None else _seconds(ttl)

    @property
    def token_grants(self) -> int:
        return self.access_tokens.issued

    def state(self) -> dict[str, Any]:
        return {"token_grants": self.token_grants, "messages": self.messages}

    def expire_access_tokens(self) -> None:
        self.access_tokens.revoke_all()

    def reset(self) -> None:
        super().reset()
        self.access_tokens.reset()
        with self._lock:
            self._messages.clear()
            self.unregistered.clear()
            self.other_senders.clear()
            self.rate_limited.clear()
            self.token_violations = False

    def _public_key(self, email: str) -> Any:
        with self._lock:
            return self._public_keys.get(email)

    def _store(self, message: dict[str, Any]) -> dict[str, Any]:
        entry = {"name": f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**19}", "message": message}
        with self._lock:
            self._messages.append(entry)
        return {"name": entry["name"]}


@functools.cache
def _throwaway_rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key per process for every sandbox service account: a fake needs no secrecy, tests need speed."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def fcm_error(status: int, message: str, error_code: str | None = None, violations: list[dict[str, str]] | None = None,
              headers: dict[str, str] | None = None) -> Response:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if violations:
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": violations})
    body = {"code": status, "message": message, "status": CANONICAL_STATUS.get(status, "UNKNOWN"), "details": details}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def payload_bytes(message: dict[str, Any]) -> int:
    """What FCM counts against its limit: "both the keys and the values" of the data, and the notification's texts."""
    data = message.get("data") if isinstance(message.get("data"), dict) else {}
    notification = message.get("notification") if isinstance(message.get("notification"), dict) else {}
    texts = [*map(str, data), *map(str, data.values()), *(str(v) for v in notification.values() if v is not None)]
    return sum(len(text.encode("utf-8")) for text in texts)


def platform_problem(message: dict[str, Any]) -> str | None:
    """Why FCM refuses the message's ``android.collapse_key`` or ``ttl``, ``apns.headers`` (APNs' limit on
    ``apns-collapse-id`` included) or ``webpush.headers``, or None."""
    android = message.get("android") or {}
    if not isinstance(android.get("collapse_key", ""), str):
        return "Invalid value at 'message.android.collapse_key' (TYPE_STRING)"
    if "ttl" in android and not _is_ttl(android["ttl"]):
        return f"Invalid value at 'message.android.ttl' ({android['ttl']!r}): a duration of 0s to {MAX_TTL_SECONDS}s"
    for platform in ("apns", "webpush"):
        headers = (message.get(platform) or {}).get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(value, str) for value in headers.values()):
            return f"Invalid value at 'message.{platform}.headers' (map<string, string>)"
    apns_headers = (message.get("apns") or {}).get("headers") or {}
    if len(apns_headers.get("apns-collapse-id", "").encode("utf-8")) > APNS_COLLAPSE_ID_BYTES:
        return "Invalid apns-collapse-id: longer than 64 bytes"
    return None


def _is_ttl(value: Any) -> bool:
    """Whether `value` is a Duration FCM takes for ``android.ttl``: JSON text such as "3600s", at most 28 days."""
    return isinstance(value, str) and DURATION.fullmatch(value) is not None and _seconds(value) <= MAX_TTL_SECONDS


def _seconds(duration: str) -> float:
    """The seconds of a Duration in JSON ("3600s", "0.5s")."""
    return float(duration[:-1])


def create_app(fake: FakeFcm) -> Starlette:
    """The ASGI app serving `fake`: the OAuth token endpoint, ``messages:send`` and ``/_sandbox/`` controls."""

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        answer = grant(form)
        fake._record({"method": "POST", "path": request.url.path, "json": {"grant_type": form.get("grant_type")},
                      "status": answer.status_code, "fault": False})
        return answer

    def grant(form: dict[str, str]) -> Response:
        if form.get("grant_type") != JWT_GRANT:
            return oauth_error("unsupported_grant_type", "Invalid grant_type")
        assertion = form.get("assertion", "")
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
            public_key = fake._public_key(issuer)
            if public_key is None:
                return oauth_error("invalid_grant", "Invalid JWT Signature.")
            claims = jwt.decode(assertion, public_key, algorithms=["RS256"], audience=GOOGLE_TOKEN_AUDIENCE)
        except jwt.InvalidTokenError as exc:
            return oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if not MESSAGING_SCOPES & set(str(claims.get("scope", "")).split()):
            return oauth_error("invalid_scope", "The JWT grants no Firebase messaging scope.")
        return JSONResponse({"access_token": fake.access_tokens.issue(), "expires_in": 3599, "token_type": "Bearer"})

    def send(project_id: str, access_token: str | None, body: Any) -> Response:
        if not fake.access_tokens.valid(access_token):
            return fcm_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.")
        if project_id != fake.project_id:
            return fcm_error(403, f"Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager"
                                  f".googleapis.com/projects/{project_id}' (or it may not exist).")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return fcm_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT",
                             [{"field": "message", "description": "message is required"}])
        if [key in message for key in ("token", "fid", "topic", "condition")].count(True) != 1:
            return fcm_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT",
                             [{"field": "message", "description": "exactly one of token, fid, topic, condition"}])
        for key in message.get("data") or {}:
            if RESERVED_DATA_KEY.match(key):
                return fcm_error(400, f"Invalid data payload key: {key}", "INVALID_ARGUMENT",
                                 [{"field": "message.data", "description": f"Invalid data payload key: {key}"}])
        if (refused := platform_problem(message)) is not None:
            return fcm_error(400, refused, "INVALID_ARGUMENT")
        if payload_bytes(message) > PAYLOAD_LIMIT:
            return fcm_error(400, "Android message is too big", "INVALID_ARGUMENT")
        device = message.get("token")
        if device is not None and not REGISTRATION_TOKEN.fullmatch(str(device)):
            violations = [{"field": "message.token", "description": "Invalid registration token"}]
            return fcm_error(400, "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT",
                             violations if fake.token_violations else None)
        if device in fake.unregistered:
            return fcm_error(404, "Requested entity was not found.", "UNREGISTERED")
        if device in fake.other_senders:
            return fcm_error(403, "SenderId mismatch", "SENDER_ID_MISMATCH")
        if device in fake.rate_limited:
            return fcm_error(429, "Device message rate exceeded.", "QUOTA_EXCEEDED", headers={"Retry-After": "1"})
        return JSONResponse(fake._store(message))

    async def messages_send(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        fault = fake._next_fault()
        if fault is not None:
            response = await fault_answer(fault, lambda f, headers: fcm_error(f.status, f.message, f.code, headers=headers))
        else:
            response = send(request.path_params["project_id"], bearer_token(request), body)
        fake._record({"method": "POST", "path": request.url.path, "json": body,
                      "status": response.status_code, "fault": fault is not None})
        return response

    return Starlette(routes=[
        Route("/token", token, methods=["POST"]),
        Route("/v1/projects/{project_id}/messages:send", messages_send, methods=["POST"]),
        *control_routes(fake, fake.state),
    ])

