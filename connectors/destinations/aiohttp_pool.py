"""The aiohttp session the delivery engine's async sends go through: one per destination, on the engine's loop."""

from __future__ import annotations

import aiohttp

from hub.settings import MAX_DELIVERY_CONCURRENCY

# How long an idle pooled connection is reused: below the shortest keep-alive common receivers grant (gunicorn's
# threaded and async workers close an idle one after 2 s; uvicorn, Node.js and Apache httpd after 5 s).
# aiohttp's 15 s outlived theirs: the engine's loop stands still between batches, so it never took in the
# receiver's close, and the first send after such a gap went out on a closed connection (network.ClientOSError,
# an attempt failed and retried). aiohttp retries that only for idempotent methods; webhooks and Twilio are POSTs.
KEEPALIVE_SECONDS = 1.5
# The longest answer line (status or header) read. aiohttp's default, 8190 bytes, refused a 200 carrying one long
# header (a CDN's Content-Security-Policy or Set-Cookie) as a network error, retried: an accepted message sent
# again. httpcore, the blocking clients' parser, reads an answer's head up to 100 KiB whatever its lines.
MAX_ANSWER_LINE_BYTES = 100 * 1024


def pooled_session(timeout_seconds: float) -> aiohttp.ClientSession:
    """A session keeping a connection for every send the engine may have in flight (aiohttp's default is 100,
    below the setting's bound), each send bounded by `timeout_seconds` in all, and each connection reused
    only within `KEEPALIVE_SECONDS` of its last use, and reading header lines as long as a blocking client
    would (`MAX_ANSWER_LINE_BYTES`), so both clients judge an answer alike.

    Build it on the event loop that will use it: the session belongs to that loop.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_DELIVERY_CONCURRENCY, keepalive_timeout=KEEPALIVE_SECONDS),
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        max_line_size=MAX_ANSWER_LINE_BYTES,
        max_field_size=MAX_ANSWER_LINE_BYTES,
    )
