"""The public unsubscribe link: GET shows a confirmation, POST unsubscribes (RFC 8058 one-click).

Mail providers' link scanners fetch every URL in a message, so a GET must
never change anything; the person confirms with a button, and mail clients
that support one-click send the POST themselves (body
``List-Unsubscribe=One-Click``).

The page that confirms it offers "Subscribe again": a form that posts the
same token to /v1/resubscribe, which gives the channel back (email has no
START to say so with). It is a path of its own, so no one-click POST to the
link can ever subscribe anyone; the grant is stamped with its own time, so
an opt-out the person makes later anywhere still holds. It undoes only the
unsubscribe its own link made, while that is the person's latest word on
the channel (`hub.consent.subscribe_again`): an old email forwarded to
anyone cannot subscribe them again after they said otherwise since.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from hub.api.console import PAGE_HARDENING
from hub.clock import utcnow
from hub.model import Identifier
from hub.consent import LinkWord, set_consent, subscribe_again
from hub.runtime import Hub
from hub.store import outbox
from hub.unsubscribe import ExpiredToken, InvalidToken, UnsubscribeRequest, read_token

UNSUBSCRIBE = "/v1/unsubscribe"
RESUBSCRIBE = "/v1/resubscribe"

router = APIRouter(tags=["unsubscribe"])
# Optional to FastAPI, so a link cut short (no `?token=`) gets the page (`_verified`), not a raw JSON 422.
Token = Query("", description="The signed token from the link in the email.")
# The page's URL and its form carry the token, which opts a person out: no cache keeps the page (a shared
# computer's browser, a proxy), and no Referer carries its URL anywhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    **PAGE_HARDENING,
    # No other page may frame it and trick a click on its button; the form posts to the page's own address.
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _page(
    title: str, text: str, status_code: int = 200, form_token: str | None = None, form_to: str = UNSUBSCRIBE,
) -> HTMLResponse:
    """The page; with `form_token`, a button that posts it to `form_to` (a path beside the page's, as its CSP
    allows no other origin): "Unsubscribe" there, or "Subscribe again" on the page that confirms an unsubscribe."""
    form = ""
    if form_token:
        button = "Unsubscribe" if form_to == UNSUBSCRIBE else "Subscribe again"
        # Relative, as the page's own address is: a hub served under a path prefix (HUB_PUBLIC_BASE_URL) keeps it.
        action = f"{form_to.rsplit('/', 1)[-1]}?token={escape(form_token)}"
        form = f'<form method="post" action="{action}"><button type="submit">{button}</button></form>'
    body = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>" \
           f"<body><h1>{title}</h1><p>{text}</p>{form}</body></html>"
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def _verified(request: Request, token: str) -> UnsubscribeRequest | HTMLResponse:
    """The link's request, or the page saying why it has none: a person follows the link, so even a link cut
    short before its token gets the page and its headers."""
    if not token.strip():
        return _page("Invalid link", "This unsubscribe link is incomplete; open the whole link from the email.", 400)
    hub: Hub = request.app.state.hub
    try:
        return read_token(hub.settings.unsubscribe_secrets(), token, utcnow())
    except ExpiredToken:
        return _page("Link expired", "This unsubscribe link has expired; use the link in a more recent email.", 410)
    except InvalidToken:
        return _page("Invalid link", "This unsubscribe link is not valid.", 403)


@router.get(UNSUBSCRIBE, response_class=HTMLResponse, summary="Confirm unsubscribing (changes nothing)")
async def confirm(request: Request, token: str = Token) -> HTMLResponse:
    verified = _verified(request, token)
    if isinstance(verified, HTMLResponse):
        return verified
    return _page("Unsubscribe", f"Stop receiving {escape(verified.channel)} messages from us?", form_token=token)


@router.post(UNSUBSCRIBE, response_class=HTMLResponse, summary="Unsubscribe (RFC 8058 one-click)")
async def unsubscribe(request: Request, token: str = Token) -> HTMLResponse:
    """The answer offers to subscribe again, with the same token: a click on the wrong button is undone at once."""
    def revoke(connection: Connection, link: UnsubscribeRequest, through: Identifier | None) -> LinkWord:
        changed = set_consent(connection, link.profile_id, link.channel, False, utcnow(), "unsubscribe link", through,
                              link=link.delivery_id)
        return LinkWord(changed, changed is not None)

    return await _said(request, token, revoke, "Unsubscribed", "You will not receive {} messages from us any more.",
                       RESUBSCRIBE)


@router.post(RESUBSCRIBE, response_class=HTMLResponse, summary="Subscribe again, with an unsubscribe link's token")
async def resubscribe(request: Request, token: str = Token) -> HTMLResponse:
    """Answered 409 when the link's unsubscribe is no longer the person's latest word (`subscribe_again`)."""
    def grant(connection: Connection, link: UnsubscribeRequest, through: Identifier | None) -> LinkWord:
        return subscribe_again(connection, link.profile_id, link.channel, link.delivery_id, utcnow(),
                               "subscribed again on the unsubscribe page", through)

    return await _said(request, token, grant, "Subscribed again", "You will receive {} messages from us again.",
                       UNSUBSCRIBE)


async def _said(
    request: Request, token: str, apply: Callable[[Connection, UnsubscribeRequest, Identifier | None], LinkWord],
    title: str, text: str, form_to: str,
) -> HTMLResponse:
    """`apply` what the person said with a genuine token: for the holder of the address the message went to (an
    unmerge may have given it to another profile since), else for the token's profile. The page then offers
    the opposite (`form_to`)."""
    verified = _verified(request, token)
    if isinstance(verified, HTMLResponse):
        return verified
    hub: Hub = request.app.state.hub

    def change() -> LinkWord:
        with hub.store.write() as connection:
            target = outbox.target_of(connection, verified.delivery_id) if verified.delivery_id else None
            through = hub.router.recipient(verified.channel, target) if target else None
            return apply(connection, verified, through)

    word = await run_in_threadpool(change)
    if word.profile_id is None:
        return _page("Invalid link", "This unsubscribe link is not valid.", 404)
    if not word.applied:
        return _page("This link can no longer subscribe you",
                     f"It only undoes the unsubscribe it made, and your {escape(verified.channel)} choice has changed "
                     "since. Use the link in our most recent email, or contact us.", 409)
    return _page(title, text.format(escape(verified.channel)), form_token=token, form_to=form_to)
