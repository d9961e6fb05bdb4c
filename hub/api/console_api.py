"""Read-only admin routes the web console needs beside the rest of the admin API: what is configured.

Each needs the `read` scope, as every GET of the admin API does (`hub.api.auth`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from connectors.base import Source
from hub.api.auth import requires
from hub.runtime import Hub

router = APIRouter(prefix="/api", tags=["console"], dependencies=[requires("read")])


def _hub(request: Request) -> Hub:
    return request.app.state.hub


@router.get("/sources", summary="The configured sources: connector, mapping, and the URLs platforms send to")
def list_sources(request: Request) -> dict[str, Any]:
    hub = _hub(request)
    return {"sources": [_source_summary(hub, source) for source in hub.sources.values()]}


def _source_summary(hub: Hub, source: Source) -> dict[str, Any]:
    """What ops need to point a platform at a source. The connector's config is left out whole: secrets
    (signing keys, write keys) live in it beside the plain settings."""
    assert hub.mappings is not None
    return {
        "id": source.source_id,
        "connector": source.slug,
        "title": source.title,
        "mapping": hub.mapping_files[source.source_id],
        "mapping_version": hub.mappings[source.source_id].version,
        "ingest_url": hub.settings.public_url(f"/v1/webhooks/{source.source_id}"),
        "sdk_ingest_url": hub.settings.public_url("/v1/batch") if source.sdk_ingest else None,
    }


@router.get("/identifier-types", summary="The identifier types profiles can be looked up by, highest priority first")
def list_identifier_types(request: Request) -> dict[str, Any]:
    identity = _hub(request).identity
    assert identity is not None
    return {"identifier_types": [{"type": each.type, "limit": each.limit} for each in identity.identifier_types]}
