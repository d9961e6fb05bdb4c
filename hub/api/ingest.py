"""Segment-compatible ingest: POST /v1/batch and the single-message endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from connectors.sources.segment import MESSAGE_TYPES
from hub import ingest, metrics
from hub.api.body import read_body
from hub.clock import utcnow
from hub.errors import BadPayloadError
from hub.runtime import Hub

router = APIRouter(tags=["ingest"])


async def _ingest(request: Request, message_type: str | None) -> JSONResponse:
    hub: Hub = request.app.state.hub
    body = await read_body(request, hub.settings.max_body_bytes)
    source = hub.authenticate(request.headers)
    try:
        result = source.parse(body, message_type)
    except BadPayloadError as exc:
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason="bad_payload").inc()
        await run_in_threadpool(
            ingest.quarantine_body, hub.store, source_id=source.source_id, reason=exc.message, problems=exc.problems,
            body=body, content_type=request.headers.get("content-type"), now=utcnow(),
        )
        raise
    report = await run_in_threadpool(ingest.accept, hub.store, source.source_id, result, utcnow())
    metrics.EVENTS_ACCEPTED.labels(source=source.source_id).inc(report.accepted)
    if report.rejected:
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason="bad_item").inc(len(result.rejected))
    if report.accepted:
        hub.pipeline_wake.set()
    return JSONResponse(report.as_response())


@router.post("/v1/batch", summary="Accept a batch of Segment-spec messages")
async def batch(request: Request) -> JSONResponse:
    return await _ingest(request, None)


def _single(message_type: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> JSONResponse:
        return await _ingest(request, message_type)

    endpoint.__name__ = f"ingest_{message_type}"
    return endpoint


for _type in MESSAGE_TYPES:
    router.add_api_route(f"/v1/{_type}", _single(_type), methods=["POST"], summary=f"Accept one {_type} message")
