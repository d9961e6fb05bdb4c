"""What every sandbox fake shares: a request log and a queue of injected faults.

A fake records every API request it receives (so tests assert on exactly what
arrived) and can be told to answer the next ones with an error, slowly, or
both (so retries, timeouts and outages can be tested end to end). How an
error looks on the wire is each vendor's own, so each fake renders `Fault`
in its vendor's shape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Fault(BaseModel):
    """An answer to serve instead of handling the next `times` API requests.

    Also the JSON body accepted by a fake's ``POST /_sandbox/faults``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: int = Field(ge=400, le=599)
    code: str = Field("UNKNOWN_EXCEPTION", description="The vendor's error code, such as REQUEST_LIMIT_EXCEEDED.")
    message: str = "Injected fault"
    times: int = Field(1, ge=1)
    retry_after: int | None = Field(None, ge=0, description="Seconds, sent as a Retry-After header.")
    delay_seconds: float = Field(0.0, ge=0, le=60, description="Wait this long before answering (timeouts).")


class RecordingFake:
    """Thread-safe request log and fault queue; the server thread writes, tests read copies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._faults: deque[Fault] = deque()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every API request received, faults and refusals included, oldest first."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def fail_next(self, status: int, code: str = "UNKNOWN_EXCEPTION", **fields: Any) -> None:
        """Answer the next API requests with this error (see `Fault` for `times`, `retry_after`, `delay_seconds`).

        Raises:
            pydantic.ValidationError: for a status outside 400-599 or `times` below 1.
        """
        self.add_fault(Fault(status=status, code=code, **fields))

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * fault.times)

    def reset(self) -> None:
        """Forget requests and queued faults; subclasses forget their vendor state too."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)


class IssuedTokens:
    """The access tokens a fake's OAuth endpoint handed out: the ones its API accepts, and how many.

    Revoking them all is how a test expires every session at once, as a token
    timeout or an admin would; the sender must then log in again.
    """

    def __init__(self, new_token: Callable[[], str]) -> None:
        self._new_token = new_token
        self._lock = threading.Lock()
        self._tokens: set[str] = set()
        self._issued = 0

    @property
    def issued(self) -> int:
        """Tokens handed out since the last `reset`: how often the sender logged in."""
        with self._lock:
            return self._issued

    def issue(self) -> str:
        token = self._new_token()
        with self._lock:
            self._tokens.add(token)
            self._issued += 1
        return token

    def valid(self, token: str | None) -> bool:
        with self._lock:
            return token in self._tokens

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()

    def reset(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._issued = 0


def control_routes(fake: RecordingFake, state: Callable[[], Any], fault_model: type[Fault] = Fault) -> list[Route]:
    """The ``/_sandbox/`` endpoints every fake has: its vendor state, requests, faults, reset.

    They let another process (the demo, a shell) inspect and steer the fake;
    they are not the vendor's and are never recorded. `fault_model` is the
    body ``POST /_sandbox/faults`` accepts: a vendor whose error codes are not
    names (Twilio's are numbers) passes its own `Fault` subclass.
    """

    async def show_state(_request: Request) -> Response:
        return JSONResponse(state())

    async def show_requests(_request: Request) -> Response:
        return JSONResponse(fake.requests)

    async def queue_fault(request: Request) -> Response:
        try:
            fault = fault_model.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        fake.add_fault(fault)
        return JSONResponse(fault.model_dump(), status_code=201)

    async def reset(_request: Request) -> Response:
        fake.reset()
        return Response(status_code=204)

    return [
        Route("/_sandbox/state", show_state, methods=["GET"]),
        Route("/_sandbox/requests", show_requests, methods=["GET"]),
        Route("/_sandbox/faults", queue_fault, methods=["POST"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]


async def fault_answer(fault: Fault, render: Callable[[Fault, dict[str, str] | None], Response]) -> Response:
    """`fault` in the vendor's shape (`render`), after its delay, with Retry-After when it has one."""
    await asyncio.sleep(fault.delay_seconds)
    return render(fault, {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None)


def oauth_error(error: str, description: str) -> Response:
    """An OAuth 2.0 token endpoint refusal (RFC 6749, section 5.2), as Salesforce and Google send it."""
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """The (user, password) of an HTTP Basic ``Authorization`` header, or None when there is no valid one."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, separator, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if separator else None
