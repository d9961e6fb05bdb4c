"""Admin API for identity repair: explain a profile, undo a bad merge, forget a person; and set a channel's
consent as ops are asked to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from hub.api.auth import BOOTSTRAP, Caller, documented_body, json_body, requires
from hub.clock import utcnow
from hub.consent import OPS_REASON_LENGTH, ops_reason_problem, set_by_ops, unknown_channel
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


class ConsentRequest(BaseModel):
    granted: bool = Field(description="true gives the channel back; false revokes it, as an unsubscribe does.")
    reason: str = Field(
        description=f"Why (at most {OPS_REASON_LENGTH} characters), recorded with the API key's name."
    )

    @field_validator("reason")
    @classmethod
    def _says_why(cls, value: str) -> str:
        problem = ops_reason_problem(value)
        if problem:
            raise ValueError(problem)
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


@router.put("/{profile_id}/consent/{channel}", summary="Grant or revoke a channel's consent, saying why",
            openapi_extra=documented_body(ConsentRequest))
async def set_profile_consent(
    request: Request, profile_id: str, channel: str, caller: Caller = requires("profiles:write"),
    body: ConsentRequest = json_body(ConsentRequest),
) -> dict[str, Any]:
    """A revocation holds against any later trait, as an unsubscribe does; a grant lets messages on the channel
    go again (those already failed as blocked by consent are not resent), until the person opts out again. The
    answer is the channel's state after."""
    hub = _hub(request)
    problem = unknown_channel(channel, hub.router.routes)
    if problem:
        raise HTTPException(400, detail=f"channel: {problem}")
    who = caller.name if caller is BOOTSTRAP else f"API key {caller.name!r}"

    def work() -> dict[str, Any] | None:
        with hub.store.write() as connection:
            return set_by_ops(connection, profile_id, channel, body.granted, body.reason, who, utcnow())

    state = await run_in_threadpool(work)
    if state is None:
        raise HTTPException(
            404, detail=f"no profile {profile_id!r} (or it was forgotten); find one with GET /api/profiles/lookup"
        )
    return state


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
