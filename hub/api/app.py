"""Building the FastAPI application around a Hub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import hub
from hub.api import admin, callbacks, console, console_api, ingest, mappings, profiles, unsubscribe
from hub.api.auth import ApiAuth
from hub.errors import IngestError
from hub.metrics import EVENTS_REJECTED, metrics_response
from hub.runtime import Hub, dead_workers_line
from hub.store.readiness import not_ready_because

# hub_events_rejected_total's reason by the refusal's status: a fixed set, so the label stays bounded.
REFUSAL_REASONS = {400: "bad_payload", 401: "auth", 403: "forbidden", 404: "unknown_source", 413: "too_large",
                   415: "unsupported_encoding"}


def create_app(hub_instance: Hub, *, run_workers: bool = True) -> FastAPI:
    """The ASGI app; with `run_workers`, the app's lifespan starts and stops the hub's workers."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_workers:
            hub_instance.start()
        try:
            yield
        finally:
            if run_workers:
                await run_in_threadpool(hub_instance.stop)

    app = FastAPI(
        title="Touchpoint Hub",
        version=hub.__version__,
        description="Segment-compatible ingest, identity resolution, micro-moment triggers and reliable delivery.",
        lifespan=lifespan,
    )
    app.state.hub = hub_instance
    app.add_middleware(AdminAnswersNotStored)
    app.add_middleware(
        IngestCors, allow_origins=["*"], allow_methods=["POST", "OPTIONS"],
        allow_headers=["authorization", "content-type", "anonymousid", "content-encoding"],
    )
    app.include_router(ingest.router)
    app.include_router(callbacks.router)
    app.include_router(unsubscribe.router)
    # Each admin route declares the scope it needs (`hub.api.auth.requires`).
    app.state.api_auth = ApiAuth(hub_instance.settings.admin_token.get_secret_value(), hub_instance.store)
    checked = [Depends(_refuse_nul)]
    app.include_router(admin.router, dependencies=checked)
    app.include_router(profiles.router, dependencies=checked)
    app.include_router(mappings.router, dependencies=checked)
    app.include_router(console_api.router, dependencies=checked)  # GET /api/sources, /api/identifier-types
    app.include_router(console.router)  # /console/: the static page; its API calls carry the bearer token

    @app.exception_handler(IngestError)
    async def ingest_error(request: Request, exc: IngestError) -> JSONResponse:
        reason = REFUSAL_REASONS.get(exc.status_code, "bad_request")
        EVENTS_REJECTED.labels(source=ingest.refused_source(request), reason=reason).inc()
        return ingest.refusal_response(exc)

    @app.get("/healthz", tags=["health"], response_class=PlainTextResponse)
    async def healthz() -> PlainTextResponse:
        """Liveness: a 503 once a worker this hub started has died, so the orchestrator restarts a hub whose
        events would otherwise pile up unprocessed. Reads no store (readiness does)."""
        if dead := hub_instance.dead_workers():
            return PlainTextResponse(f"{dead_workers_line(dead)}: restart the hub", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        reason = await run_in_threadpool(not_ready_because, hub_instance.store)
        if reason is None:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return await metrics_response(hub_instance.store)

    return app


class AdminAnswersNotStored:
    """Marks every admin API answer `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.

    Profiles, touchpoints, the delivery log and quarantined bodies hold emails and phones: without `no-store` a
    browser or an HTTP cache may keep them on disk after the page is gone (the console asks for no-store in its
    own fetches; curl, scripts and /docs do not). Pure ASGI rather than an `@app.middleware`, so a request
    outside /api/ (ingest, which is benchmarked) costs one prefix test.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_not_stored(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_not_stored)


class IngestCors(CORSMiddleware):
    """CORS for the ingest endpoints under /v1/, for SDKs running in web pages, and nothing else.

    analytics.js posts text/plain (no preflight) and reads the answer only if it allows the page's origin;
    RudderStack's JS SDK sends Basic auth and application/json, which a browser sends only after an OPTIONS
    preflight. Any origin is allowed, as Segment's API allows it: the write key is public, and no cookie is
    taken. The admin API and the console stay same-origin. The preflight is a 204, with no body.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and _from_a_page(scope):
            await super().__call__(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 200:
            return answer
        return Response(status_code=204, headers={name: value for name, value in answer.headers.items()
                                                  if name not in ("content-length", "content-type")})


def _from_a_page(scope: Scope) -> bool:
    """Whether a browser sent the request (it names the page's Origin): server-side SDKs, the bulk of ingest, send
    none, and skip the CORS layer altogether."""
    return any(name == b"origin" for name, _value in scope["headers"])


async def _refuse_nul(request: Request) -> None:
    """Refuse a path or query value of the admin API holding NUL: PostgreSQL refuses such text, so one in an id
    or a filter was a 500 on the multi-node store (SQLite found nothing). No id holds it (404 as for any unknown
    id) and no filter can match it (400 naming the parameter). Checked before the API key: it reads nothing
    stored, so it tells a caller without a key nothing."""
    for name, value in request.path_params.items():
        if "\x00" in str(value):
            raise HTTPException(404, detail=f"no {name.removesuffix('_id')} {value!r}")
    for name, value in request.query_params.multi_items():
        if "\x00" in value:
            raise HTTPException(400, detail=f"{name}: contains \\u0000 (NUL), which nothing the hub stores holds; remove it")
