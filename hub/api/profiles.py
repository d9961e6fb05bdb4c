"""Admin API for identity repair: explain a profile, undo a bad merge, forget a person."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from hub.api.auth import documented_body, json_body, requires
from hub.clock import utcnow
from hub.destination_settings import record_erasures
from hub.errors import IdentityRepairError
from hub.runtime import Hub
from hub.store import forget, identity_repair
from hub.store.identity_explain import explain

router = APIRouter(prefix="/api/profiles", tags=["identity"])


class UnmergeRequest(BaseModel):
    merged_profile_id: str = Field(
        min_length=1, description="The profile a bad link merged in (see `merges` in the explain answer)."
    )

    @field_validator("merged_profile_id")
    @classmethod
    def _holds_no_nul(cls, value: str) -> str:
        """No profile id holds NUL, and PostgreSQL refuses text that does: the unmerge was a 500 there."""
        if "\x00" in value:
            raise ValueError("contains \\u0000 (NUL), which no profile id holds; send the id from `merges`")
        return value


def _hub(request: Request) -> Hub:
    return request.app.state.hub


@router.get("/{profile_id}/explain", summary="The identity graph of a profile and why each link exists",
            dependencies=[requires("read")])
async def explain_profile(request: Request, profile_id: str) -> dict[str, Any]:
    def work() -> dict[str, Any] | None:
        with _hub(request).store.read() as connection:
            return explain(connection, profile_id)

    graph = await run_in_threadpool(work)
    if graph is None:
        raise HTTPException(404, detail=f"no profile {profile_id!r}")
    return graph


@router.post("/{profile_id}/unmerge", summary="Split off the identifiers a bad merge brought in",
             dependencies=[requires("profiles:write")], openapi_extra=documented_body(UnmergeRequest))
async def unmerge_profile(
    request: Request, profile_id: str, body: UnmergeRequest = json_body(UnmergeRequest)
) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with _hub(request).store.write() as connection:
            return identity_repair.unmerge(connection, profile_id, body.merged_profile_id, utcnow())

    try:
        return await run_in_threadpool(work)
    except IdentityRepairError as exc:
        raise HTTPException(404, detail=str(exc)) from None


@router.delete("/{profile_id}", summary="Right to be forgotten: erase a person's identifiers and personal data",
               dependencies=[requires("profiles:delete")])
async def forget_profile(request: Request, profile_id: str) -> dict[str, Any]:
    """The answer counts what was erased, and `crm_erasures`: the deletions of the person's CRM records planned
    (HUB_SALESFORCE_ERASE_ON_FORGET), sent by the delivery workers like any delivery."""
    hub = _hub(request)

    def work() -> dict[str, Any]:
        with hub.store.write() as connection:
            return forget.forget(
                connection, profile_id, utcnow(), hub.pipeline.config.identity.block_forgotten_identifiers,
                record_erasures(hub.settings),
            )

    try:
        forgotten = await run_in_threadpool(work)
    except IdentityRepairError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    if forgotten["crm_erasures"]:
        hub.wakeups.announce("delivery")
    return forgotten
