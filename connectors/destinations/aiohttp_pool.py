"""The aiohttp session the delivery engine's async sends go through: one per destination, on the engine's loop."""

from __future__ import annotations

import aiohttp

from hub.settings import MAX_DELIVERY_CONCURRENCY


def pooled_session(timeout_seconds: float) -> aiohttp.ClientSession:
    """A session keeping a connection for every send the engine may have in flight (aiohttp's default is 100,
    below the setting's bound), each send bounded by `timeout_seconds` in all.

    Build it on the event loop that will use it: the session belongs to that loop.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_DELIVERY_CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
    )
