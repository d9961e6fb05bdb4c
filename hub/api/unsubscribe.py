"""The public unsubscribe link: GET shows a confirmation, POST unsubscribes (RFC 8058 one-click).

Mail providers' link scanners fetch every URL in a message, so a GET must
never change anything; the person confirms with a button, and mail clients
that support one-click send the POST themselves (body
``List-Unsubscribe=One-Click``).
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from hub.api.console import PAGE_HARDENING
from hub.clock import utcnow
from hub.consent import set_consent
from hub.runtime import Hub
from hub.store import outbox
from hub.unsubscribe import ExpiredToken, InvalidToken, UnsubscribeRequest, read_token

router = APIRouter(tags=["unsubscribe"])
Token = Query(description="The signed token from the link in the email.")
# The page's URL and its form carry the token, which opts a person out: no cache keeps the page (a shared
# computer's browser, a proxy), and no Referer carries its URL anywhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    **PAGE_HARDENING,
    # No other page may frame it and trick a click on its button; the form posts to the page's own address.
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _page(title: str, text: str, status_code: int = 200, form_token: str | None = None) -> HTMLResponse:
    form = (
        f'<form method="post" action="?token={escape(form_token)}"><button type="submit">Unsubscribe</button></form>'
        if form_token
        else ""
    )
    body = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>" \
           f"<body><h1>{title}</h1><p>{text}</p>{form}</body></html>"
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def _verified(request: Request, token: str) -> UnsubscribeRequest | HTMLResponse:
    hub: Hub = request.app.state.hub
    try:
        return read_token(hub.settings.unsubscribe_secrets(), token, utcnow())
    except ExpiredToken:
        return _page("Link expired", "This unsubscribe link has expired; use the link in a more recent email.", 410)
    except InvalidToken:
        return _page("Invalid link", "This unsubscribe link is not valid.", 403)


@router.get("/v1/unsubscribe", response_class=HTMLResponse, summary="Confirm unsubscribing (changes nothing)")
async def confirm(request: Request, token: str = Token) -> HTMLResponse:
    verified = _verified(request, token)
    if isinstance(verified, HTMLResponse):
        return verified
    return _page("Unsubscribe", f"Stop receiving {escape(verified.channel)} messages from us?", form_token=token)


@router.post("/v1/unsubscribe", response_class=HTMLResponse, summary="Unsubscribe (RFC 8058 one-click)")
async def unsubscribe(request: Request, token: str = Token) -> HTMLResponse:
    verified = _verified(request, token)
    if isinstance(verified, HTMLResponse):
        return verified
    hub: Hub = request.app.state.hub

    def revoke() -> bool:
        with hub.store.write() as connection:
            target = outbox.target_of(connection, verified.delivery_id) if verified.delivery_id else None
            through = hub.router.recipient(verified.channel, target) if target else None
            return set_consent(connection, verified.profile_id, verified.channel, False, utcnow(), "unsubscribe link", through)

    if not await run_in_threadpool(revoke):
        return _page("Invalid link", "This unsubscribe link is not valid.", 404)
    return _page("Unsubscribed", f"You will not receive {escape(verified.channel)} messages from us any more.")
