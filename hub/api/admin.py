"""Admin API under /api/: what ops and the console read. Each route declares its scope (`hub.api.auth`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any

import pydantic_core
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from hub import durations, stats
from hub.api.auth import requires
from hub.clock import utcnow
from hub.identifiers import KNOWN_TYPES, normalize_identifier
from hub.decision_explain import explain
from hub.errors import ConfigError
from hub.replay import replay_source
from hub.runtime import Hub
from hub.store import decisions, delivery_log, delivery_replay, outbox, quarantine, touchpoints
from hub.store.keyset import Key, Keyset
from hub.store.profile_views import find_profile_id, for_live_profile, profile_view
from hub.templates import template_names

router = APIRouter(prefix="/api", tags=["admin"])
Limit = Query(100, ge=1, le=1000, description="At most this many rows (1-1000).")
Cursor = Query(
    None, description="The `next_cursor` of the page before, with the same filters, for the rows after it; none for the newest."
)
Page = Callable[[Connection, int, Key | None], list[dict[str, Any]]]  # (connection, limit, after) -> rows
READ = [requires("read")]  # every GET


def _hub(request: Request) -> Hub:
    return request.app.state.hub


async def _answer(request: Request, work: Callable[[Connection], dict[str, Any] | None], missing: str = "") -> Response:
    """The answer of a read-only store query, queried and written off the event loop (`json_response`); a query
    that finds nothing (None) is a 404 whose detail is `missing`."""

    def run() -> Response | None:
        with _hub(request).store.read() as connection:
            found = work(connection)
        return None if found is None else json_response(found)

    answer = await run_in_threadpool(run)
    if answer is None:
        raise HTTPException(404, detail=missing)
    return answer


def json_response(answer: dict[str, Any]) -> Response:
    """`answer` as FastAPI writes it (pydantic's writer: datetimes with Z), else by the json module; build it off
    the event loop, as a large answer takes a while to write.

    pydantic gives up past 255 levels ("Maximum serialization depth
    exceeded"), and events stored before ingest refused nesting past
    `connectors.storable_json.MAX_JSON_DEPTH` may nest up to ~1,000 deep: one such
    event made every page showing it a 500 (the touchpoints, its person's
    profile and timeline). The json module writes as deep as Python recurses,
    which on a worker thread's short stack is as deep as the store wrote it.
    """
    try:
        body = pydantic_core.to_json(answer)
    except pydantic_core.PydanticSerializationError:
        text = json.dumps(answer, default=pydantic_core.to_jsonable_python, ensure_ascii=False, separators=(",", ":"))
        body = text.encode()
    return Response(body, media_type="application/json")


def _paged(name: str, pages: Keyset, limit: int, cursor: str | None, find: Page) -> Callable[[Connection], dict[str, Any]]:
    """The answer listing under `name` a page of what `find` finds in the order of `pages`, from past the key in
    `cursor`, and the `next_cursor` of the page after it, null at the end: one row more than the page tells
    whether there is one, so the last page does not send the client after an empty one."""
    after = _after(pages, cursor)

    def page(connection: Connection) -> dict[str, Any]:
        rows, next_cursor = pages.page(find(connection, limit + 1, after), limit)
        return {name: rows, "next_cursor": next_cursor}

    return page


def _after(pages: Keyset, cursor: str | None) -> Key | None:
    try:
        return pages.after(cursor)
    except ValueError as exc:
        raise HTTPException(400, detail=f"cursor: {exc}") from None


def _listed(
    name: str, pages: Keyset, limit: int, cursor: str | None, profile_id: str | None, search: Callable[..., list[dict[str, Any]]]
) -> Callable[[Connection], dict[str, Any]]:
    """`_paged` of what `search` finds, filtered by the surviving profile of `profile_id`, which may be an id merged
    away since (`for_live_profile`). A blank `profile_id` read as no filter listed everyone's rows (with
    `status=dead`, the whole dead-letter queue for one person's), so it is refused, as the CLI refuses it."""
    _refuse_blank(profile_id=profile_id)

    def find(connection: Connection, limit: int, after: Key | None) -> list[dict[str, Any]]:
        return for_live_profile(connection, profile_id, lambda c, live: search(c, profile_id=live, limit=limit, after=after))

    return _paged(name, pages, limit, cursor, find)


def _refuse_blank(**filters: str | None) -> None:
    """400 naming a filter given blank: read as no filter, it listed every row (a script's `?rule_id=$RULE` with
    RULE unset got every rule's decisions, with no word that its filter was dropped)."""
    for name, value in filters.items():
        if value is not None and not value.strip():
            raise HTTPException(400, detail=f"{name}: needs a value, or leave the parameter out")


@router.get("/touchpoints", summary="Touchpoints, newest first", dependencies=READ)
async def list_touchpoints(
    request: Request, limit: int = Limit, source: str | None = None, event: str | None = None,
    profile_id: str | None = None,
    order: touchpoints.Order = Query(
        "received", description="Newest first by when the hub received each event, or by when it occurred (a timeline)."
    ),
    cursor: str | None = Cursor,
) -> Response:
    _refuse_blank(source=source, event=event)
    search = partial(touchpoints.search, source_id=source, event=event, order=order)
    return await _answer(request, _listed("touchpoints", touchpoints.PAGES[order], limit, cursor, profile_id, search))


@router.get("/profiles/lookup", summary="Find the profile an identifier belongs to", dependencies=READ)
async def lookup_profile(
    request: Request,
    type: str = Query(description=f"Identifier type: {', '.join(KNOWN_TYPES)} or a custom one."),
    value: str = Query(description="Identifier value; normalized as the pipeline does (e.g. emails lower-cased)."),
) -> Response:
    hub = _hub(request)
    if (undeclared := hub.identity.undeclared(type)) is not None:
        raise HTTPException(400, detail=f"type: {undeclared}")
    identifier = normalize_identifier(type, value, hub.settings.default_phone_region, hub.identity)
    if identifier is None:
        raise HTTPException(400, detail=f"value: {value!r} is not a usable {type} identifier")

    def query(connection: Connection) -> dict[str, Any] | None:
        profile_id = find_profile_id(connection, identifier)
        return profile_view(connection, profile_id) if profile_id else None

    return await _answer(request, query, f"no profile has {type} {identifier.value!r}")


@router.get("/profiles/{profile_id}", summary="A profile with its traits and identifiers", dependencies=READ)
async def get_profile(request: Request, profile_id: str) -> Response:
    return await _answer(request, lambda connection: profile_view(connection, profile_id), f"no profile {profile_id!r}")


@router.get("/deliveries", summary="The delivery log: deliveries with every attempt", dependencies=READ)
async def list_deliveries(
    request: Request, limit: int = Limit, profile_id: str | None = None,
    status: str | None = Query(None, description=f"One of {', '.join(outbox.STATUSES)} (dead: the DLQ)."),
    channel: str | None = None, destination: str | None = Query(None, description="Destination id, e.g. twilio_sms."),
    since: datetime | None = Query(None, description="Planned at or after this ISO 8601 time (UTC if no offset)."),
    until: datetime | None = Query(None, description="Planned before this ISO 8601 time (UTC if no offset)."),
    cursor: str | None = Cursor,
) -> Response:
    if status is not None and status not in outbox.STATUSES:
        raise HTTPException(400, detail=f"status: {status!r} is not a delivery status; pick one of {', '.join(outbox.STATUSES)}")
    hub = _hub(request)
    search = partial(
        delivery_log.search, status=status, channel=channel, destination_id=destination,
        since=_utc("since", since), until=_utc("until", until), recipient=hub.router.recipient,
        region=hub.settings.default_phone_region,
    )
    listed = _listed("deliveries", delivery_log.PAGES, limit, cursor, profile_id, search)

    def page(connection: Connection) -> dict[str, Any]:
        refused = delivery_log.unmatched_filters(
            connection, hub.registry.destinations, hub.router.routes, destination=destination, channel=channel
        )
        if refused:  # a typo answered 200 with no deliveries: read as an empty log, or an empty dead-letter queue
            raise HTTPException(400, detail="; ".join(f"{name}: {why}" for name, why in refused.items()))
        return listed(connection)

    return await _answer(request, page)


@router.post("/deliveries/{delivery_id}/replay", summary="Send a dead or failed delivery again", dependencies=[requires("replay")])
async def replay_delivery(request: Request, delivery_id: str) -> dict[str, Any]:
    hub = _hub(request)

    def replay() -> str | None:
        with hub.store.write() as connection:
            return delivery_replay.replay(connection, delivery_id, utcnow(), hub.router.addressee)

    previous = await run_in_threadpool(replay)
    if previous is None:
        raise HTTPException(404, detail=f"no delivery {delivery_id!r}")
    if previous not in delivery_replay.REPLAYABLE_STATUSES:
        raise HTTPException(409, detail=delivery_replay.why_not_replayed(delivery_id, previous))
    hub.wakeups.announce("delivery")
    return {"delivery_id": delivery_id, "previous_status": previous, "status": "pending"}


def _utc(name: str, moment: datetime | None) -> datetime | None:
    """The query parameter `name` in UTC (a time without offset is UTC already), or a 422 naming it: a time at
    an end of the calendar with an offset (0001-01-01T00:00:00+14:00) has no UTC date the store can hold."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise HTTPException(
            422, detail=f"{name}: {moment.isoformat()} falls outside the years 1 to 9999 in UTC; give a time within them"
        ) from None


@router.get("/decisions", summary="Decisions, newest first (capped ones included)", dependencies=READ)
async def list_decisions(
    request: Request, limit: int = Limit, profile_id: str | None = None, rule_id: str | None = None,
    cursor: str | None = Cursor,
) -> Response:
    _refuse_blank(rule_id=rule_id)
    search = partial(decisions.search, rule_id=rule_id)
    return await _answer(request, _listed("decisions", decisions.PAGES, limit, cursor, profile_id, search))


@router.get("/decisions/{decision_id}", summary="One decision explained: rule, evidence, action fates, deliveries", dependencies=READ)
async def get_decision(request: Request, decision_id: str) -> Response:
    hub = _hub(request)
    explained = partial(
        explain, decision_id=decision_id, recipient=hub.router.recipient, region=hub.settings.default_phone_region
    )
    return await _answer(request, explained, f"no decision {decision_id!r}")


@router.get("/rules", summary="The trigger rules in force, and why the last edit of the file was refused, if it was", dependencies=READ)
async def list_rules(request: Request) -> dict[str, Any]:
    """A refused edit leaves the last good rules running and says so only in the log; here ops can see it
    (looking also picks up an edit made since the last event)."""
    hub = _hub(request)
    assert hub.rulebook is not None and hub.router is not None
    rules, refused_edit = await run_in_threadpool(hub.rulebook.looked_at_now)
    return {
        "rules": [
            {"id": rule.id, "version": rule.version, "description": rule.description, "priority": rule.priority,
             "urgency": rule.urgency, "waits": rule.absence is not None,
             "channels": [action.channel for action in rule.respond]}
            for rule in rules
        ],
        "refused_edit": refused_edit,
        "refused_template_edits": await run_in_threadpool(hub.router.templates.refused_edits, template_names(rules)),
    }


@router.get("/quarantine", summary="Refused bodies and items, newest first, each body cut short", dependencies=READ)
async def list_quarantine(request: Request, limit: int = Limit, cursor: str | None = Cursor) -> Response:
    """Each `raw_body` is its first `quarantine.LISTED_BODY_BYTES` (`raw_body_cut`, `raw_body_bytes`): anyone with
    the public write key can fill the quarantine with bodies of HUB_MAX_BATCH_BYTES (4 MiB by default);
    GET /api/quarantine/{id} has one whole."""
    return await _answer(request, _paged("quarantine", quarantine.PAGES, limit, cursor, quarantine.recent))


@router.get("/quarantine/{quarantine_id}", summary="One refused body or item, its body whole", dependencies=READ)
async def get_quarantined(request: Request, quarantine_id: int) -> Response:
    return await _answer(
        request, lambda connection: quarantine.get(connection, quarantine_id),
        f"no quarantined body {quarantine_id}; GET /api/quarantine lists their ids",
    )


@router.post(
    "/sources/{source_id}/replay",
    summary="Re-normalize a source's stored events with its current mapping; quarantined ones go through the pipeline again",
    dependencies=[requires("replay")],
)
async def replay_source_events(
    request: Request, source_id: str,
    since: str = Query(description="Events received since this ISO-8601 time, or this long ago: 90m, 24h, 7d."),
) -> dict[str, Any]:
    """`touchhub replay` for the console and scripts: after a mapping fix, what it quarantined is processed by
    the running pipeline once every hub has reloaded the mapping (`available_at`). Twice changes nothing. The
    mapping is the file as just saved; a save the hub refused is a 409 naming its problems, nothing replayed."""
    hub = _hub(request)
    if source_id not in hub.sources:
        raise HTTPException(404, detail=f"no source {source_id!r}; configured: {', '.join(sorted(hub.sources))}")
    try:
        start = durations.since(since, utcnow())
    except ValueError as exc:
        raise HTTPException(422, detail=f"since: {exc}") from None
    try:
        report = await run_in_threadpool(replay_source, hub, source_id, start)
    except ConfigError as exc:
        raise HTTPException(409, detail=[
            f"The mapping of source {source_id!r} as saved was refused, so the hub still maps with its last good "
            "version and nothing was replayed; fix these problems (touchhub mappings check), then replay again:",
            *exc.problems,
        ]) from None
    return {
        "source": source_id, "since": start.isoformat(), "rewritten": report.rewritten, "unchanged": report.unchanged,
        "requeued": report.requeued, "dropped": report.dropped, "unmappable": report.unmappable,
        "errors": report.errors, "available_at": report.available_at and report.available_at.isoformat(),
    }


@router.get("/stats", summary="Counts of events, profiles, decisions and deliveries", dependencies=READ)
async def get_stats(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(stats.collect, _hub(request).store)
