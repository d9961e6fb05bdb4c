"""Provider callbacks: POST /v1/callbacks/{destination_id}[/{kind}].

The destination verifies and parses (`connectors.base.CallbackReceiver`);
this route applies what it learned (delivery statuses, consent changes) in
one transaction. A verification failure changes nothing.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from connectors.base import CallbackReceiver, CallbackRequest, CallbackResult
from hub.api.body import read_body
from hub.clock import utcnow
from hub.consent import lock_before_deliveries, set_consent, set_consent_by_identifier
from hub.runtime import Hub
from hub.model import Identifier
from hub.store import consent_changes, outbox
from hub.store.profile_views import find_profile_id

log = structlog.get_logger(__name__)
router = APIRouter(tags=["callbacks"])


@router.post("/v1/callbacks/{destination_id}", summary="Delivery status callback from a provider")
@router.post("/v1/callbacks/{destination_id}/{kind}", summary="Other provider callbacks, such as inbound messages")
async def callback(request: Request, destination_id: str, kind: str = "status") -> Response:
    hub: Hub = request.app.state.hub
    destination = hub.destinations.get(destination_id)
    if not isinstance(destination, CallbackReceiver):
        raise HTTPException(404, detail=f"destination_id: no destination {destination_id!r} takes callbacks")
    body = await read_body(request, hub.settings.max_body_bytes)
    query = f"?{request.url.query}" if request.url.query else ""
    incoming = CallbackRequest(kind, hub.settings.public_url(request.url.path) + query, request.headers, body)
    result = destination.handle_callback(incoming)
    await run_in_threadpool(_apply, hub, destination_id, result)
    return Response(result.response_body, media_type=result.response_media_type)


def _apply(hub: Hub, destination_id: str, result: CallbackResult) -> None:
    """Apply the statuses, then the consent words, of one callback.

    A status revokes consent (Twilio's 21610) only in the report that settles
    its delivery. The refusal is Twilio's answer when it handled the message,
    which the first final report brings; a repeat of it (Twilio retrying the
    callback, or a captured one posted again: its signature carries no time)
    finds the delivery settled and is old news. Revoking on it would undo
    whatever the person said since, such as a START, with a refusal older
    than that word; so a first report that comes after the person's START
    (Twilio reports a failure minutes later) revokes nothing either.
    """
    now = utcnow()
    with hub.store.write() as connection:
        lock_before_deliveries(connection, bool(result.consent) or any(report.revokes_consent for report in result.statuses))
        for report in result.statuses:
            delivery = outbox.apply_provider_status(connection, destination_id, report, now)
            if delivery is None:
                # Acknowledged all the same: a provider retrying it would not make it match.
                log.warning("status for a message no delivery sent", destination=destination_id,
                            provider_message_id=report.provider_message_id)
            elif report.revokes_consent and delivery["settled_now"]:
                through = hub.router.recipient(delivery["channel"], delivery["target"])
                if not _granted_after_it(connection, delivery, through):
                    set_consent(connection, delivery["profile_id"], delivery["channel"], False, now, "refused by provider", through)
        for signal in result.consent:
            set_consent_by_identifier(connection, signal.identifier, signal.channel, signal.granted, now, "recipient keyword")


def _granted_after_it(connection: Connection, delivery: dict[str, Any], through: Identifier | None) -> bool:
    """Whether the person gave the channel consent back after the message the refusal is about was sent: the
    one holding the address now (`set_consent`'s rule: an unmerge may have given it back to another profile)."""
    sent_at = outbox.last_attempt_at(connection, delivery["delivery_id"])
    if sent_at is None:
        return False
    holder = (find_profile_id(connection, through) if through else None) or delivery["profile_id"]
    return consent_changes.granted_since(connection, holder, delivery["channel"], sent_at)
