"""Ingest: the Segment-compatible endpoints (POST /v1/batch, /v1/track, ...) and POST /v1/webhooks/{source_id}.

Both paths end the same way: the source parses the verified request, valid
events are committed to the inbox and refused items to quarantine before the
2xx, and a body that cannot be used at all is quarantined whole (one that
cannot even be decoded, only why: a write key in it could not be taken out).

The write key of the SDK endpoints comes as HTTP Basic auth or as a
`writeKey` field of the body (`hub.api.write_keys`), never kept. A source
that takes write keys takes them both ways at its webhook URL too, as Segment
takes them on every endpoint.

analytics.js posts to short aliases (/v1/t, /v1/p, ..., /v1/b for a batch),
analytics-ruby and analytics-java to /v1/import (a batch); every route also
takes its path with one trailing slash (`_post`). The batch endpoints take
bodies up to HUB_MAX_BATCH_BYTES (RudderStack's SDKs flush up to 4 MB),
single messages and webhooks HUB_MAX_BODY_BYTES.

A client-side SDK's message without `context.ip` gets the request's address
there, as Segment's servers fill it (`connectors.sources.segment`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InternalError, OperationalError
from starlette.concurrency import run_in_threadpool

from connectors.base import InboundRequest, Source
from connectors.sources.segment import ANALYTICS_JS_PATHS, MESSAGE_TYPES
from hub import ingest, metrics
from hub.api.body import decoded, read_raw
from hub.api.write_keys import credentials, without_write_keys
from hub.clock import utcnow
from hub.errors import (
    BadPayloadError, IngestError, ItemProblem, StoreBusyError, UnknownSourceError, UnsupportedMediaTypeError,
)
from hub.runtime import Hub
from hub.store.opening import why
from hub.store.readiness import database_problem

STORE_UNAVAILABLE = "store_unavailable"  # hub_events_rejected_total's reason when the store takes no write
# The store's refusals of any write now (no connection, a lock held too long, a full disk, a read-only file or
# standby: OperationalError, and InternalError for PostgreSQL's read-only transaction), not errors of the request's
# own rows (IntegrityError, DataError), which a retry would meet again: those stay a 500, a bug to look at.
STORE_REFUSALS = (OperationalError, InternalError, StoreBusyError)  # the last: another process's SQLite write lock
STORE_RETRY_SECONDS = 5  # Retry-After of that 503: a failover or a freed disk, not a minute's outage per request
UNKNOWN_SOURCE = "unknown"  # the source label of a refusal before the request named a configured source
TOO_DEEP_TO_KEEP = "body: a message is nested too deeply to keep even in quarantine; keep payloads to a few levels"
# An error answer's `code` by its status, beside Segment's `error`: RudderStack's SDKs read `code` and `message`
# (rudder-sdk-python raises KeyError without them, takes that for a network error and resends a refused batch).
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
               415: "unsupported_media_type", 503: "unavailable"}
# Refusals of a body as it is decoded (a cut-off gzip stream, an unknown Content-Encoding): why is quarantined.
UNDECODABLE = (BadPayloadError, UnsupportedMediaTypeError)
router = APIRouter(tags=["ingest"])
log = structlog.get_logger(__name__)


async def _inbound(
    request: Request, hub: Hub, limit: int, sender: Callable[[InboundRequest], Source]
) -> InboundRequest:
    """The request with its body decoded; why a body is refused as it is decoded is first quarantined
    (`_keep_undecodable`), if `sender` (the route's authentication of the request as sent) names its source."""
    raw = await read_raw(request, limit)
    try:
        body = decoded(raw, request.headers.get("content-encoding"), limit)
    except UNDECODABLE as exc:
        await _keep_undecodable(request, hub, InboundRequest(request.method, str(request.url), request.headers, raw),
                                sender, exc)
        raise
    return InboundRequest(request.method, str(request.url), request.headers, body)


async def _keep_undecodable(
    request: Request, hub: Hub, sent: InboundRequest, sender: Callable[[InboundRequest], Source], exc: IngestError
) -> None:
    """Quarantine why a body could not be decoded, for ops to see what the client did, but not the body: a
    `writeKey` in it cannot be found to take out (README: never stored), and kept as sent, any `read` key had it
    from /api/quarantine (a cut gzip stream inflates up to its cut). Only for a sender the request authenticates
    as it came (Basic auth, a signature over the bytes sent): nobody else may fill the quarantine."""
    try:
        source = _refusals_count_for(request, sender(sent))
    except IngestError:
        return
    reason = f"{exc.message}; the body could not be decoded, so a write key in it could not be taken out: " \
             f"it was not kept ({len(sent.body)} bytes, Content-Encoding: {sent.headers.get('content-encoding')})"
    try:
        await _quarantine(hub, source.source_id, replace(sent, body=b""), reason, exc.problems)
    except STORE_REFUSALS as store_exc:  # the refusal stands: a resend of the same body would be refused again
        log.error("ingest could not quarantine an undecodable body", source=source.source_id, reason=why(store_exc))


def refusal_response(exc: IngestError) -> JSONResponse:
    """A refused request's answer, in Segment's shape (`error`, each refused item under `rejected`) and
    RudderStack's (`code`, `message`)."""
    return _error_response(exc.status_code, exc.message, [problem.as_dict() for problem in exc.problems],
                           {"WWW-Authenticate": 'Basic realm="touchpoint-hub"'} if exc.status_code == 401 else None)


def _error_response(
    status_code: int, message: str, rejected: list[dict[str, object]], headers: dict[str, str] | None
) -> JSONResponse:
    return JSONResponse(
        {"success": False, "code": ERROR_CODES.get(status_code, "bad_request"), "message": message, "error": message,
         "rejected": rejected},
        status_code=status_code, headers=headers,
    )


def refused_source(request: Request) -> str:
    """The source label of a refused request: only a configured source's id, so the label stays bounded."""
    return getattr(request.state, "source_id", UNKNOWN_SOURCE)


def _refusals_count_for(request: Request, source: Source) -> Source:
    """Name the request's source for the IngestError handler, which counts every refusal (`refused_source`)."""
    request.state.source_id = source.source_id
    return source


async def _accept(hub: Hub, source: Source, inbound: InboundRequest) -> JSONResponse:
    """The request's events committed (or its body quarantined) before the answer; a 503 when the store takes
    nothing now.

    A store that refuses the write (unreachable, a read-only standby, a full
    disk) was a 500 with no word of why, and uvicorn then dropped the
    keep-alive connection, so the sender's next request on it got no answer
    at all. A 503 with Retry-After is what SDKs and webhook senders retry:
    nothing of the request was kept, and it is safe to send it again.
    """
    try:
        return await _accepted(hub, source, inbound)
    except STORE_REFUSALS as exc:
        log.error("ingest could not store the request", source=source.source_id, reason=why(exc))
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason=STORE_UNAVAILABLE).inc()
        return _error_response(
            503, f"the hub cannot store events now: {database_problem(exc, hub.store)}; "
                 "nothing of this request was kept: send it again",
            [], {"Retry-After": str(STORE_RETRY_SECONDS)},
        )


async def _quarantine(hub: Hub, source_id: str, inbound: InboundRequest, reason: str, problems: list[ItemProblem]) -> None:
    """Keep the request's body, as sent, in quarantine with why it was refused."""
    await run_in_threadpool(
        ingest.quarantine_body, hub.store, source_id=source_id, reason=reason, problems=problems, body=inbound.body,
        content_type=inbound.headers.get("content-type"), now=utcnow(),
    )


async def _accepted(hub: Hub, source: Source, inbound: InboundRequest) -> JSONResponse:
    try:
        result = source.parse(inbound)
        report = await run_in_threadpool(ingest.accept, hub.store, source.source_id, result, utcnow())
    except (BadPayloadError, RecursionError) as exc:
        # RecursionError: a message refused as too deep is quarantined on its own, written by the json module, which
        # gives up near 1,000 levels where orjson reads 1,024: the body is kept whole instead, and refused.
        refused = exc if isinstance(exc, BadPayloadError) else BadPayloadError(TOO_DEEP_TO_KEEP)
        await _quarantine(hub, source.source_id, inbound, refused.message, refused.problems)
        raise refused from None
    metrics.EVENTS_ACCEPTED.labels(source=source.source_id).inc(report.accepted)
    if report.rejected:
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason="bad_item").inc(len(result.rejected))
    if report.accepted:
        hub.wakeups.announce("pipeline")
    return JSONResponse(report.as_response())


async def _ingest(request: Request, limit: int) -> JSONResponse:
    hub: Hub = request.app.state.hub
    inbound = await _inbound(request, hub, limit, hub.authenticate)  # Basic auth: the key in a body is unread
    body_keys, kept = without_write_keys(inbound)
    source = _refusals_count_for(request, hub.authenticate(credentials(inbound, body_keys)))
    # The sender's address, for a browser's or a phone's message to carry as `context.ip` (`segment`).
    return await _accept(hub, source, replace(kept, client_ip=request.client.host if request.client else None))


async def _ingest_message(request: Request) -> JSONResponse:
    return await _ingest(request, request.app.state.hub.settings.max_body_bytes)


async def _ingest_batch(request: Request) -> JSONResponse:
    return await _ingest(request, request.app.state.hub.settings.max_batch_bytes)


def _post(path: str, endpoint: Callable[..., Awaitable[JSONResponse]], **options: Any) -> None:
    """Serve POST `path`, and `path` with one trailing slash beside it: Starlette answered that with a 307 to the
    path without, which OkHttp (analytics-java, analytics-android) and Ruby's Net::HTTP do not follow for a POST;
    they drop the batch (analytics-java's own default path is /v1/import/). Registered, not redirected nor
    rewritten in a middleware: an ingest request pays nothing for it."""
    name = options.pop("name", endpoint.__name__)
    router.add_api_route(path, endpoint, methods=["POST"], name=name, **options)
    router.add_api_route(f"{path}/", endpoint, methods=["POST"], name=f"{name}_slash", include_in_schema=False)


_post("/v1/batch", _ingest_batch, name="batch", summary="Accept a batch of Segment-spec messages")
# Segment's batch endpoint under its historical name: analytics-ruby posts to /v1/import, analytics-java and
# classic analytics-android to /v1/import/.
_post("/v1/import", _ingest_batch, name="ingest_import", include_in_schema=False)

for _type in MESSAGE_TYPES:
    _post(f"/v1/{_type}", _ingest_message, summary=f"Accept one {_type} message", name=f"ingest_{_type}")

for _alias, _type in ANALYTICS_JS_PATHS.items():
    _post(f"/v1/{_alias}", _ingest_batch if _type is None else _ingest_message, name=f"ingest_alias_{_alias}",
          include_in_schema=False)  # analytics.js's short paths


async def webhook(request: Request, source_id: str) -> JSONResponse:
    """Authenticated by the source's own scheme, on the body as signed; a `writeKey` in it is never kept, and is
    the write key of a source that takes them (the SDK sources), as on /v1/batch."""
    hub: Hub = request.app.state.hub
    source = hub.sources.get(source_id)
    if source is None:
        raise UnknownSourceError(f"source: no source {source_id!r} is configured; see mappings/sources.yaml")
    _refusals_count_for(request, source)
    inbound = await _inbound(request, hub, hub.settings.max_body_bytes, lambda sent: _verified(source, sent))
    body_keys, kept = without_write_keys(inbound)
    _verified(source, credentials(inbound, body_keys) if source.sdk_ingest else inbound)
    return await _accept(hub, source, kept)


_post("/v1/webhooks/{source_id}", webhook, summary="Accept a webhook for a configured source (mappings/sources.yaml)")


def _verified(source: Source, request: InboundRequest) -> Source:
    source.verify(request)
    return source
