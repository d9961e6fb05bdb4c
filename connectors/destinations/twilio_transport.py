"""The official `twilio` client's transports: a connection per send in flight, and a Twilio-compatible base URL.

The delivery engine sends SMS with the library's async client
(`create_async` over aiohttp, `AsyncPooledHttpClient`) on its event loop,
up to HUB_DELIVERY_CONCURRENCY at once. On a worker thread each, as before,
they cost the process about 0.04 ms more CPU per event at 1,000 events/s,
and the first attempt's p99 was the longer in 9 of 10 pairs of runs
(bench/README.md). The blocking `send` of the Destination contract keeps
the library's `TwilioHttpClient`, which keeps min(32, CPUs + 4) connections
(6 on a two-core host). urllib3 closes each connection handed back to a
full pool ("Connection pool is full, discarding connection"), so with more
sends at once than that, later ones open new connections to api.twilio.com,
each with its own TLS handshake. `PooledHttpClient` keeps as many as the
engine can have in flight, and so does the async client's session
(`pooled_session`, as the webhooks').

The twilio library builds every REST URL on ``https://api.twilio.com`` and has
no setting to change it, but its `Client` accepts an `http_client`. Rewriting
the URL there, at the transport, keeps the library's own request building,
Basic auth and error parsing (`TwilioRestException`) in play, so tests against
the sandbox exercise exactly what production runs. Production uses the same
classes when a Twilio-compatible endpoint (a regional proxy, the sandbox) is
configured.

The library's exceptions keep a refusal's status and body, not its headers,
so the transports also note each response's headers (`retry_after.note`):
that is how a send reads the Retry-After of the 429 that refused it.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from requests.adapters import HTTPAdapter
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response

from connectors.destinations import retry_after
from connectors.destinations.aiohttp_pool import pooled_session
from hub.settings import MAX_DELIVERY_CONCURRENCY

# With TWILIO_EDGE / TWILIO_REGION set (environment or Client arguments) the
# library rewrites the host to api.<edge>.<region>.twilio.com before calling the
# transport; those hosts must be redirected too, or a sandbox run would quietly
# send its requests to the real Twilio.
_TWILIO_API_ORIGIN = re.compile(r"^https://api(?:\.[a-z0-9-]+){0,2}\.twilio\.com(?=[/?]|$)")

def _received_by_caller(response: Response) -> Response:
    retry_after.note(response.headers)
    return response


class PooledHttpClient(TwilioHttpClient):
    """A `TwilioHttpClient` whose pool keeps a connection for every send the delivery engine may have in flight.

    `kwargs` are `TwilioHttpClient`'s; ``max_retries`` is kept (the library
    mounts an adapter of the default pool size when it is given).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.session is not None:
            adapter = HTTPAdapter(pool_maxsize=MAX_DELIVERY_CONCURRENCY, max_retries=kwargs.get("max_retries") or 0)
            self.session.mount("https://", adapter)

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        """`TwilioHttpClient.request`, its response's headers also noted (`retry_after.note`)."""
        return _received_by_caller(super().request(method, url, **kwargs))


class BaseUrlHttpClient(PooledHttpClient):
    """A `PooledHttpClient` that sends Twilio REST API calls to `base_url` instead.

    Args:
        base_url: what replaces ``https://api.twilio.com``, such as
            ``http://127.0.0.1:54321``; a path prefix is kept.
        **kwargs: passed to `TwilioHttpClient` (``timeout``, ``proxy``,
            ``max_retries``, ``pool_connections``, ...).

    `request` raises `ValueError` for a URL on any other Twilio host (such as
    ``verify.twilio.com``): the endpoint stands in for the REST API host only,
    and credentials meant for it must not travel anywhere else.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        if self.session is not None and self.base_url.startswith("http://"):
            # The pool is mounted for https:// only; a plain-HTTP endpoint gets the
            # same adapter so it behaves alike.
            self.session.mount("http://", self.session.get_adapter("https://api.twilio.com"))

    def rewrite(self, url: str) -> str:
        """The URL to call instead of `url`; raises `ValueError` for non-REST-API hosts."""
        return _rewritten(url, self.base_url)

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        """`TwilioHttpClient.request` (params, data, headers, auth, timeout, allow_redirects) at the base URL."""
        return super().request(method, self.rewrite(url), **kwargs)


class AsyncPooledHttpClient(AsyncTwilioHttpClient):
    """The library's aiohttp transport, for `create_async`, with a connection for every send in flight, the
    send timeout on every request (the library passes none), and optionally a Twilio-compatible `base_url`
    as `BaseUrlHttpClient` has.

    Build it on the event loop that will use it: its aiohttp session belongs to that loop.
    """

    def __init__(self, timeout: float, base_url: str | None = None) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.session = pooled_session(timeout)

    async def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> Response:
        """`AsyncTwilioHttpClient.request` (params, data, timeout, allow_redirects too) at the base URL, if any,
        with Basic auth as a header: aiohttp 3.14 deprecates the `auth` argument the library would pass it
        (twilio/twilio-python#931). The response's headers are also noted (`retry_after.note`)."""
        if auth is not None:
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        target = _rewritten(url, self.base_url) if self.base_url else url
        return _received_by_caller(await super().request(method, target, headers=headers, **kwargs))


def _rewritten(url: str, base_url: str) -> str:
    """`url` on `base_url` instead of Twilio's REST API host; `ValueError` for any other host."""
    rewritten, count = _TWILIO_API_ORIGIN.subn(lambda _origin: base_url, url, count=1)
    if not count:
        raise ValueError(f"{url!r} is not on Twilio's REST API host; refusing to send it to {base_url}")
    return rewritten
