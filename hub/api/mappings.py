"""Admin API for mappings: the console's live preview, of the active mapping or of a draft not yet saved."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from connectors.base import Source
from hub.api.admin import json_response
from hub.api.auth import documented_body, json_body, requires
from hub.api.ingest import refusal_response
from hub.clock import utcnow
from hub.errors import IngestError
from hub.identity_config import IdentityConfig
from hub.mapping import Mapping, MappingSpec, compile_mapping
from hub.mappings_folder import undeclared_identifier_types, undeclared_problem
from hub.preview import preview
from hub.runtime import Hub

router = APIRouter(prefix="/api/mappings", tags=["mappings"])


class PreviewRequest(BaseModel):
    sample: Any = Field(description="The payload exactly as the platform sends it (object or array).")
    mapping: dict[str, Any] | None = Field(
        None, description="A draft mapping (the YAML file's keys as JSON) to try instead of the active one."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers the platform sends with the sample, e.g. {\"webhook-id\": \"msg_...\"}: a source "
        "that takes the message id from a header needs it to show the touchpoint_id the event will get.",
    )


@router.post("/{source_id}/preview", summary="The touchpoints a sample becomes; nothing is stored",
             dependencies=[requires("mappings")], openapi_extra=documented_body(PreviewRequest))
async def preview_sample(
    source_id: str, request: Request, body: PreviewRequest = json_body(PreviewRequest)
) -> Response:
    """One outcome per event: `touchpoint` (the canonical document), `dropped` (a drop rule matched),
    `unmappable` (the mapping error quarantine would record) or `refused` (the source would reject the item).
    A sample the source refuses whole is answered as ingest would refuse it (400, `error` and `rejected`).
    A draft mapping that does not validate is answered 422 with every problem.
    """
    hub: Hub = request.app.state.hub
    source = hub.sources.get(source_id)
    if source is None:
        raise HTTPException(404, detail=f"source: no source {source_id!r} is configured; see mappings/sources.yaml")
    # Compiling a draft, normalizing a large sample and writing the answer take up to a second: on the event loop,
    # that held up every request, ingest included.
    return await run_in_threadpool(_preview, hub, source, body)


def _preview(hub: Hub, source: Source, body: PreviewRequest) -> Response:
    assert hub.mappings is not None and hub.identity is not None
    mapping = hub.mappings[source.source_id]
    if body.mapping is not None:
        mapping = _draft(body.mapping, mapping.name, hub.identity)
    sample = json.dumps(body.sample).encode()
    try:
        outcomes = preview(source, mapping, sample, utcnow(), hub.settings.default_phone_region, hub.identity, body.headers)
    except IngestError as exc:  # answered here: the app's IngestError handler would count half-typed samples (the
        return refusal_response(exc)  # console previews at each pause in typing) in hub_events_rejected_total
    return json_response({
        "source_id": source.source_id, "mapping_version": mapping.version, "outcomes": [o.as_dict() for o in outcomes],
    })


def _draft(document: dict[str, Any], name: str, identity: IdentityConfig) -> Mapping:
    """The draft as the hub would check it saved (start-up and reload), so the console never previews an edit the
    hub would refuse; 422 with every problem otherwise."""
    try:
        draft = compile_mapping(f"draft-{name}", MappingSpec.model_validate(document))
    except ValidationError as exc:
        problems = [f"mapping.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise HTTPException(422, detail=problems) from None
    undeclared = undeclared_identifier_types(identity, draft)
    if undeclared:
        raise HTTPException(422, detail=[f"mapping.{undeclared_problem(type_)}" for type_ in undeclared])
    return draft
