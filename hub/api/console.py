"""The web console for ops under /console/: one HTML page, its script and its style, served as files.

The page is built in the browser from the admin API's JSON with DOM text
nodes, never from HTML strings, so event data (which senders control) never
passes through markup on the server or in the page. Each API call carries the
bearer token the user signed in with; the page itself needs none. The
Content-Security-Policy admits only this hub's own script and style, so even
markup that slipped through could not run a script of its own.

The files live in the `console/` folder beside this module (package data,
not a Python package).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

FILES = Path(__file__).parent / "console"
# The only files served, with their media types: a name not listed is a 404, so no path leaves the folder.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# What every page the hub serves a browser sends (the console, the unsubscribe page): no sniffing a type, no
# address passed on to a linked resource, no framing by another site.
PAGE_HARDENING = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}
SECURITY_HEADERS = {
    **PAGE_HARDENING,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # revalidate, so an upgraded hub's console is never mixed with a cached script
}

router = APIRouter(tags=["console"], include_in_schema=False)


def _asset(name: str) -> FileResponse:
    return FileResponse(FILES / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)


@router.get("/console")
async def console_redirect() -> RedirectResponse:
    """Relative, so the page's relative links (script, style, API) also work behind a proxy's path prefix."""
    return RedirectResponse("console/", status_code=307)


@router.get("/console/")
async def console_page() -> FileResponse:
    return _asset("index.html")


@router.get("/console/{name}")
async def console_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, detail=f"console: no file {name!r}; the console is at /console/")
    return _asset(name)
