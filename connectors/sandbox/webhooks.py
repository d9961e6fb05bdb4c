"""A webhook receiver for the outbound webhook destinations: records what arrives, fails on demand.

It stands in for a chat widget's backend or a CDP's audience endpoint. It
keeps every request as received (raw body and headers), so tests check the
Standard Webhooks signature with an independent implementation, and it can
be told to answer the next requests with an error (and Retry-After) or to
take a while to answer (the delivery benchmark's ~20 ms provider). The
``/_sandbox/`` endpoints let another process read a summary and reset it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import secrets
import threading
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HOOKS_PATH = "/hooks/{name}"


def new_secret() -> str:
    """A fresh Standard Webhooks secret: 'whsec_' + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class FakeWebhookReceiver:
    """Thread-safe record of received webhooks; `delay_seconds` slows every answer down."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.secret = new_secret()
        self.delay_seconds = delay_seconds
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        self._faults: deque[tuple[int, int | str | None]] = deque()
        self._in_flight = 0
        self.max_in_flight = 0  # most requests open at once: the concurrency a sender really reached

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every request, oldest first: ``{"name", "headers", "body", "status"}`` (body as raw bytes)."""
        with self._lock:
            return copy.deepcopy(self._received)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._received)

    def fail_next(self, status: int, *, times: int = 1, retry_after: int | str | None = None) -> None:
        """Answer the next `times` webhooks with `status`; `retry_after` is seconds or an HTTP date."""
        with self._lock:
            self._faults.extend([(status, retry_after)] * times)

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self._faults.clear()
            self.max_in_flight = 0

    def _record(self, name: str, headers: dict[str, str], body: bytes) -> Response:
        """Record the request on arrival (a slow answer must not land in the next test) and pick the answer."""
        with self._lock:
            status, retry_after = self._faults.popleft() if self._faults else (200, None)
            self._received.append({"name": name, "headers": headers, "body": body, "status": status})
        if status >= 300:
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else None
            return JSONResponse({"error": "injected fault"}, status_code=status, headers=extra)
        return JSONResponse({"ok": True})


def create_app(receiver: FakeWebhookReceiver) -> Starlette:
    async def hook(request: Request) -> Response:
        answer = receiver._record(request.path_params["name"], dict(request.headers), await request.body())
        receiver._in_flight += 1  # the event loop is single-threaded: no lock needed
        receiver.max_in_flight = max(receiver.max_in_flight, receiver._in_flight)
        try:
            if receiver.delay_seconds:
                await asyncio.sleep(receiver.delay_seconds)
        finally:
            receiver._in_flight -= 1
        return answer

    async def summary(_request: Request) -> Response:
        received = receiver.received
        ids = {r["headers"].get("webhook-id") for r in received}
        return JSONResponse({"count": len(received), "distinct_ids": len(ids), "max_in_flight": receiver.max_in_flight})

    async def reset(_request: Request) -> Response:
        receiver.reset()
        return Response(status_code=204)

    return Starlette(routes=[
        Route(HOOKS_PATH, hook, methods=["POST"]),
        Route("/_sandbox/summary", summary, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ])
