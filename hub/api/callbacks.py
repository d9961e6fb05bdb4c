"""Provider callbacks: POST /v1/callbacks/{destination_id}[/{kind}].

The destination verifies and parses (`connectors.base.CallbackReceiver`);
this route applies what it learned (delivery statuses, consent changes) in
one transaction. A verification failure changes nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from connectors.base import CallbackReceiver, CallbackRequest, CallbackResult
from hub import provider_reports
from hub.api.body import read_body
from hub.clock import utcnow
from hub.consent import set_consent_by_identifier
from hub.errors import UnknownSourceError
from hub.runtime import Hub
from hub.store import consent_changes

router = APIRouter(tags=["callbacks"])


@router.post("/v1/callbacks/{destination_id}", summary="Delivery status callback from a provider")
@router.post("/v1/callbacks/{destination_id}/{kind}", summary="Other provider callbacks, such as inbound messages")
async def callback(request: Request, destination_id: str, kind: str = "status") -> Response:
    hub: Hub = request.app.state.hub
    destination = hub.destinations.get(destination_id)
    if destination is not None:
        # Refusals (a forged signature, a bad body) count under this id (`hub.api.ingest.refused_source`), one the
        # hub configured; an unknown id under `unknown`, so a scanner's guesses make no new label series.
        request.state.source_id = destination_id
    if not isinstance(destination, CallbackReceiver):
        raise UnknownSourceError(f"destination_id: no destination {destination_id!r} takes callbacks; "
                                 "check the callback URL given to the provider")
    body = await read_body(request, hub.settings.max_body_bytes)
    query = f"?{request.url.query}" if request.url.query else ""
    incoming = CallbackRequest(kind, hub.settings.public_url(request.url.path) + query, request.headers, body)
    result = destination.handle_callback(incoming)
    await run_in_threadpool(_apply, hub, destination, destination_id, result)
    return Response(result.response_body, media_type=result.response_media_type)


def _apply(hub: Hub, destination: CallbackReceiver, destination_id: str, result: CallbackResult) -> None:
    """Apply the statuses (`hub.provider_reports`: a failure the person cannot be reached for plans the rule's
    next channel, and wakes the delivery workers for it), then the consent words, of one callback; a word its
    message said before (`consent_changes.first_said`) is old news, and would undo what the person said since."""
    now = utcnow()
    with hub.store.write() as connection:
        planned = provider_reports.apply(
            connection, destination_id, result.statuses, now, hub.router.recipient, consent_changes_too=bool(result.consent),
            cannot_reach=destination.cannot_reach, fall_back=hub.responder.fall_back,
        )
        for signal in result.consent:
            if signal.message_id and not consent_changes.first_said(connection, destination_id, signal.message_id, now):
                continue
            set_consent_by_identifier(connection, signal.identifier, signal.channel, signal.granted, now, "recipient keyword")
    if planned:
        hub.wakeups.announce("delivery")
