"""Admin API for mappings: preview what a sample becomes under a source's active mapping (the console's live preview)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from hub.api.body import read_body
from hub.clock import utcnow
from hub.preview import preview
from hub.runtime import Hub

router = APIRouter(prefix="/api/mappings", tags=["mappings"])


@router.post("/{source_id}/preview", summary="The touchpoints a sample payload becomes; nothing is stored")
async def preview_sample(request: Request, source_id: str) -> dict[str, Any]:
    """Send the payload as the platform would (JSON body); get one outcome per event.

    Outcomes: `touchpoint` (with the canonical document), `dropped` (a drop
    rule matched), `unmappable` (the mapping error, as quarantine would record
    it) or `refused` (the source would reject the item at ingest).
    """
    hub: Hub = request.app.state.hub
    source = hub.sources.get(source_id)
    if source is None:
        raise HTTPException(404, detail=f"source: no source {source_id!r} is configured; see mappings/sources.yaml")
    assert hub.mappings is not None
    mapping = hub.mappings[source_id]
    sample = await read_body(request, hub.settings.max_body_bytes)
    outcomes = preview(source, mapping, sample, utcnow(), hub.settings.default_phone_region)
    return {"source_id": source_id, "mapping_version": mapping.version, "outcomes": [o.as_dict() for o in outcomes]}
