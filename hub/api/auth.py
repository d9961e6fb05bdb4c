"""Who may call the admin API, decided before anything else of the request is read.

Every route under /api/ declares the scope it needs with `requires` (the
scopes are `hub.store.api_keys.SCOPES`). The bearer token is an API key made
with `touchhub keys create`, or HUB_ADMIN_TOKEN, the bootstrap, which holds
every scope. A missing, unknown or revoked key is a 401 saying how to get
one; a key without the scope is a 403 naming the scope and the key.

FastAPI reads and parses a route's body parameter before it runs any
dependency, so an anonymous caller got 422s with the parser's diagnosis and
could make the server buffer a body of any size. A route with a body takes
it through `json_body` instead: read once the scope is checked, within
HUB_MAX_BODY_BYTES, and validated as FastAPI would (422 naming the field).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
import structlog
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from connectors.base import matches_digest, secret_digest
from connectors.webhooks import json_document
from hub.api.body import read_body
from hub.clock import utcnow
from hub.errors import BadPayloadError, IngestError
from hub.store import Store, api_keys
from hub.store.api_keys import ADMIN, SCOPES, ApiKey

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
HOW_TO_GET_ONE = "an admin makes one with `touchhub keys create NAME --scope SCOPE`"
bearer = HTTPBearer(
    auto_error=False, scheme_name="APIKey",
    description="An API key (`touchhub keys create NAME --scope SCOPE`) or HUB_ADMIN_TOKEN; "
    "each operation lists the scope it needs.",
)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: an API key, by its name, or HUB_ADMIN_TOKEN."""

    name: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


BOOTSTRAP = Caller("HUB_ADMIN_TOKEN", (ADMIN,))


class ApiAuth:
    """The caller a bearer token stands for; of HUB_ADMIN_TOKEN only the digest is kept, compared in constant time."""

    def __init__(self, admin_token: str, store: Store) -> None:
        # An empty HUB_ADMIN_TOKEN turns it off once API keys are handed out: it cannot be revoked otherwise.
        self._admin_digest = secret_digest(admin_token) if admin_token else None
        self._store = store
        self._uses_recorded: dict[str, datetime] = {}  # key id -> when this process last had its use written
        # Writes of last use, one at a time and off the requests' path: a GET waited for the store's writer
        # (on SQLite, the pipeline's batches), and concurrent GETs each wrote.
        self._use_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-key-use")

    async def caller(self, token: str) -> Caller:
        if self._admin_digest is not None and matches_digest(token, self._admin_digest):
            return BOOTSTRAP
        key = await run_in_threadpool(self._api_key, token)
        if key is None:
            raise _unauthorized(f"admin API: the bearer token is not an API key of this hub; {HOW_TO_GET_ONE}")
        if key.revoked_at is not None:
            raise _unauthorized(
                f"admin API: API key {key.name!r} ({key.key_id}) was revoked at "
                f"{key.revoked_at.isoformat(timespec='seconds')}; {HOW_TO_GET_ONE}"
            )
        return Caller(key.name, key.scopes)

    def _api_key(self, token: str) -> ApiKey | None:
        """The key; its use is recorded in the background, by each process at most once a minute per key."""
        now = utcnow()
        with self._store.read() as connection:
            key = api_keys.verify(connection, token)
        if key is not None and key.revoked_at is None and key.use_to_record(now):
            last = self._uses_recorded.get(key.key_id)
            if last is None or now - last >= api_keys.USE_RECORDED_EVERY:
                self._uses_recorded[key.key_id] = now
                self._use_writer.submit(self._record_use, key, now)
        return key

    def _record_use(self, key: ApiKey, now: datetime) -> None:
        try:
            with self._store.write() as connection:
                api_keys.record_use(connection, key, now)
        except Exception:  # a last-use stamp is worth no error: the next request's, a minute on, tries again
            log.warning("could not record an API key's use", key_id=key.key_id, exc_info=True)
            self._uses_recorded.pop(key.key_id, None)


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    if credentials is None:
        raise _unauthorized(f"admin API: send 'Authorization: Bearer <API key>'; {HOW_TO_GET_ONE}")
    auth: ApiAuth = request.app.state.api_auth
    return await auth.caller(credentials.credentials)


async def _holds_scopes(needed: SecurityScopes, caller: Caller = Depends(authenticate)) -> Caller:
    for scope in needed.scopes:
        if not caller.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"admin API: this needs the {scope!r} scope, which API key {caller.name!r} does not hold "
                f"(it has {', '.join(caller.scopes)}); an admin makes a key with it: "
                f"`touchhub keys create NAME --scope {scope}`",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
    return caller


def requires(scope: str) -> Any:
    """A route dependency: the caller is authenticated and holds `scope` (or `admin`); shown in the OpenAPI."""
    if scope not in SCOPES:
        raise ValueError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
    return Security(_holds_scopes, scopes=[scope])


def json_body(model: type[M]) -> Any:
    """A route parameter: the JSON body as `model`, read after the route's scope check and within the body limit.

    Pair it with `openapi_extra=documented_body(model)` so /docs still shows the body.
    """

    async def read(request: Request) -> M:
        try:
            raw = await read_body(request, request.app.state.hub.settings.max_body_bytes)
        except IngestError as exc:
            raise HTTPException(exc.status_code, detail=exc.message) from None
        try:
            document = json_document(raw)  # UTF-8, -16 or -32, as FastAPI read bodies; BadPayloadError says why not
        except BadPayloadError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=exc.message) from None
        try:
            return model.model_validate(document)
        except ValidationError as exc:
            # Without the values sent: one may not be writable back (a lone surrogate), or be a person's email.
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False, include_input=False)]
            ) from None

    return Depends(read)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route whose body `json_body` reads."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})
