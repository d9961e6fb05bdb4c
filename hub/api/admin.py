"""Admin API under /api/: what ops and the console read. Bearer-token protected."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from hub import stats
from hub.identifiers import KNOWN_TYPES, normalize_identifier
from hub.runtime import Hub
from hub.store import outbox, quarantine, touchpoints
from hub.store.identity_graph import find_profile_id, live_profile_id, profile_view

router = APIRouter(prefix="/api", tags=["admin"])
Limit = Query(100, ge=1, le=1000, description="At most this many rows (1-1000).")


def _hub(request: Request) -> Hub:
    return request.app.state.hub


@router.get("/touchpoints", summary="Touchpoints, newest first")
async def list_touchpoints(
    request: Request, limit: int = Limit, source: str | None = None, event: str | None = None,
    profile_id: str | None = None,
) -> dict[str, Any]:
    def query() -> list[dict[str, Any]]:
        with _hub(request).store.read() as connection:
            live_id = live_profile_id(connection, profile_id) if profile_id else None
            if profile_id and live_id is None:
                return []
            return touchpoints.search(connection, limit=limit, source_id=source, event=event, profile_id=live_id)

    return {"touchpoints": await run_in_threadpool(query)}


@router.get("/profiles/lookup", summary="Find the profile an identifier belongs to")
async def lookup_profile(
    request: Request,
    type: str = Query(description=f"Identifier type: {', '.join(KNOWN_TYPES)} or a custom one."),
    value: str = Query(description="Identifier value; normalized as the pipeline does (e.g. emails lower-cased)."),
) -> dict[str, Any]:
    hub = _hub(request)
    identifier = normalize_identifier(type, value, hub.settings.default_phone_region)
    if identifier is None:
        raise HTTPException(400, detail=f"value: {value!r} is not a usable {type} identifier")

    def query() -> dict[str, Any] | None:
        with hub.store.read() as connection:
            profile_id = find_profile_id(connection, identifier)
            return profile_view(connection, profile_id) if profile_id else None

    profile = await run_in_threadpool(query)
    if profile is None:
        raise HTTPException(404, detail=f"no profile has {type} {identifier.value!r}")
    return profile


@router.get("/profiles/{profile_id}", summary="A profile with its traits and identifiers")
async def get_profile(request: Request, profile_id: str) -> dict[str, Any]:
    def query() -> dict[str, Any] | None:
        with _hub(request).store.read() as connection:
            return profile_view(connection, profile_id)

    profile = await run_in_threadpool(query)
    if profile is None:
        raise HTTPException(404, detail=f"no profile {profile_id!r}")
    return profile


@router.get("/deliveries", summary="The delivery log: deliveries with every attempt")
async def list_deliveries(
    request: Request, limit: int = Limit, profile_id: str | None = None, status: str | None = None,
    channel: str | None = None,
) -> dict[str, Any]:
    def query() -> list[dict[str, Any]]:
        with _hub(request).store.read() as connection:
            live_id = live_profile_id(connection, profile_id) if profile_id else None
            if profile_id and live_id is None:
                return []
            return outbox.search(connection, limit=limit, profile_id=live_id, status=status, channel=channel)

    return {"deliveries": await run_in_threadpool(query)}


@router.get("/quarantine", summary="Refused bodies and items, newest first")
async def list_quarantine(request: Request, limit: int = Limit) -> dict[str, Any]:
    def query() -> list[dict[str, Any]]:
        with _hub(request).store.read() as connection:
            return quarantine.recent(connection, limit)

    return {"quarantine": await run_in_threadpool(query)}


@router.get("/stats", summary="Counts of events, profiles, decisions and deliveries")
async def get_stats(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(stats.collect, _hub(request).store)
