"""Ingest: the Segment-compatible endpoints (POST /v1/batch, /v1/track, ...) and POST /v1/webhooks/{source_id}.

Both paths end the same way: the source parses the verified request, valid
events are committed to the inbox and refused items to quarantine before the
2xx, and a body that cannot be used at all is quarantined whole.

The write key of the SDK endpoints comes as HTTP Basic auth (the key as user
name) or, as Segment's HTTP API also allows, as a `writeKey` field of the
JSON body (analytics-clj, Analytics.NET and hand-rolled clients send it in
every message). Either way it is checked by the source against the key's
digest, and it is never kept: it is taken out of the body before anything is
parsed, stored or quarantined (`_without_write_keys`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from connectors.base import InboundRequest, Source
from connectors.sources.segment import MESSAGE_TYPES
from hub import ingest, metrics
from hub.api.body import read_body
from hub.clock import utcnow
from hub.errors import AuthenticationError, BadPayloadError, UnknownSourceError
from hub.runtime import Hub

router = APIRouter(tags=["ingest"])

WRITE_KEY_FIELD = "writeKey"
REDACTED = "[redacted]"
# A writeKey's value in a body that is not valid JSON (kept whole in quarantine), a cut-off value included.
_WRITE_KEY_TEXT = re.compile(rb'("writeKey"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)')


async def _inbound(request: Request, hub: Hub) -> InboundRequest:
    body = await read_body(request, hub.settings.max_body_bytes)
    return InboundRequest(request.method, str(request.url), request.headers, body)


def _without_write_keys(inbound: InboundRequest) -> tuple[set[str], InboundRequest]:
    """The write keys the body carries, and the request with every `writeKey` field taken out of its body.

    The field is looked for at the top level of the body (a batch, or the one
    message of /v1/track, ...) and at the top level of each message of a
    batch. A JSON body loses the fields (re-serialised, only when it had
    one); a body that is not JSON, quarantined as it came, keeps them with
    their values replaced by "[redacted]". Only a body that names the field
    is parsed here, so Basic-auth senders pay nothing; no SDK spells the name
    with JSON escapes.
    """
    body = inbound.body
    if WRITE_KEY_FIELD.encode() not in body:
        return set(), inbound
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set(), replace(inbound, body=_WRITE_KEY_TEXT.sub(rb'\1"' + REDACTED.encode() + rb'"', body))
    if not isinstance(document, dict):
        return set(), inbound
    holders: list[dict[str, Any]] = [document]
    if isinstance(document.get("batch"), list):
        holders += [item for item in document["batch"] if isinstance(item, dict)]
    found = [holder.pop(WRITE_KEY_FIELD) for holder in holders if WRITE_KEY_FIELD in holder]
    if not found:
        return set(), inbound
    keys = {key for key in found if isinstance(key, str) and key}
    return keys, replace(inbound, body=json.dumps(document, ensure_ascii=False).encode("utf-8"))


def _credentials(inbound: InboundRequest, body_keys: set[str]) -> InboundRequest:
    """The request as the source authenticates it: the body's write key, if any, as its Basic auth.

    A key in both the Authorization header and the body must be the same key,
    and so must the keys of a batch's messages: a mismatch is refused (401,
    naming it) rather than settled for one side, as Segment settles it for
    the body. Two different keys mean a misconfigured client or proxy;
    picking either could file the events under a source the operator did not
    mean (two sources may each have a valid key), or let whatever can add a
    JSON field override the transport's credential. The source then checks
    the key against its digest in constant time, as it does a header's, so a
    wrong or missing key is the same 401 with the same message. A body over
    the size limit is refused (413) while it is read, before any key, header
    or body, is looked at.
    """
    if not body_keys:
        return inbound
    if len(body_keys) > 1:
        raise AuthenticationError("conflicting write keys: the body's messages carry different writeKey values")
    [body_key] = body_keys
    header_key = _basic_auth_user(inbound.headers.get("authorization", ""))
    if header_key is not None and not hmac.compare_digest(header_key.encode(), body_key.encode()):
        raise AuthenticationError(
            "conflicting write keys: the Authorization header and the body's writeKey differ; send one key"
        )
    basic = base64.b64encode(f"{body_key}:".encode()).decode("ascii")
    return replace(inbound, headers={**inbound.headers, "authorization": f"Basic {basic}"})


def _basic_auth_user(header: str) -> str | None:
    """The user name of an HTTP Basic Authorization header, as the Segment source reads it."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


async def _accept(hub: Hub, source: Source, inbound: InboundRequest) -> JSONResponse:
    try:
        result = source.parse(inbound)
    except BadPayloadError as exc:
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason="bad_payload").inc()
        await run_in_threadpool(
            ingest.quarantine_body, hub.store, source_id=source.source_id, reason=exc.message, problems=exc.problems,
            body=inbound.body, content_type=inbound.headers.get("content-type"), now=utcnow(),
        )
        raise
    report = await run_in_threadpool(ingest.accept, hub.store, source.source_id, result, utcnow())
    metrics.EVENTS_ACCEPTED.labels(source=source.source_id).inc(report.accepted)
    if report.rejected:
        metrics.EVENTS_REJECTED.labels(source=source.source_id, reason="bad_item").inc(len(result.rejected))
    if report.accepted:
        hub.wakeups.announce("pipeline")
    return JSONResponse(report.as_response())


async def _ingest(request: Request) -> JSONResponse:
    hub: Hub = request.app.state.hub
    inbound = await _inbound(request, hub)
    body_keys, kept = _without_write_keys(inbound)
    return await _accept(hub, hub.authenticate(_credentials(inbound, body_keys)), kept)


@router.post("/v1/batch", summary="Accept a batch of Segment-spec messages")
async def batch(request: Request) -> JSONResponse:
    return await _ingest(request)


for _type in MESSAGE_TYPES:
    router.add_api_route(f"/v1/{_type}", _ingest, methods=["POST"], summary=f"Accept one {_type} message",
                         name=f"ingest_{_type}")


@router.post("/v1/webhooks/{source_id}", summary="Accept a webhook for a configured source (mappings/sources.yaml)")
async def webhook(request: Request, source_id: str) -> JSONResponse:
    """Authenticated by the source's own scheme, on the body as signed; a `writeKey` in it is still never kept."""
    hub: Hub = request.app.state.hub
    source = hub.sources.get(source_id)
    if source is None:
        raise UnknownSourceError(f"source: no source {source_id!r} is configured; see mappings/sources.yaml")
    inbound = await _inbound(request, hub)
    source.verify(inbound)
    return await _accept(hub, source, _without_write_keys(inbound)[1])
