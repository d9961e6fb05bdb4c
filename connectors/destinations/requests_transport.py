"""A requests transport adapter for vendor libraries that hard-code their hosts.

simple-salesforce builds ``https://{domain}.salesforce.com/...`` and
``https://{instance}/services/data/...``; firebase-admin posts to
``https://fcm.googleapis.com/v1/...``. Neither has a setting for another host,
but both send through a `requests.Session` we can mount an adapter on. Doing
the redirect there keeps each library's own request building, auth and error
parsing in play, so tests against the sandbox exercise what production runs.

The adapter also owns three transport policies the libraries leave open: a
default timeout (simple-salesforce's sObject calls take none), no retries
(firebase-admin's own urllib3 policy retries 500/503 four times and sleeps
through Retry-After inside the calling thread; the hub's delivery engine
retries with a durable schedule instead), and a connection kept for every
send the engine may have in flight. requests keeps 10 per host: with more
sends at once, urllib3 closes each connection handed back to a full pool
("Connection pool is full, discarding connection"), and a later send opens
a new one, with a new TLS handshake.
"""

from __future__ import annotations

import re
from typing import Any

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from hub.settings import MAX_DELIVERY_CONCURRENCY


class VendorAdapter(HTTPAdapter):
    """Sends a vendor's API calls with a default timeout, optionally to `base_url` instead.

    Args:
        origin: matches the scheme and host of the URLs this adapter serves,
            such as ``^https://fcm\\.googleapis\\.com``.
        timeout: seconds, used when the caller passes none.
        base_url: what replaces the matched origin, such as
            ``http://127.0.0.1:54321``; a path prefix is kept. None sends to
            the vendor itself.

    `send` raises `ValueError` for a URL `origin` does not match: credentials
    meant for the vendor's API must not travel anywhere else.
    """

    def __init__(self, origin: re.Pattern[str], timeout: float, base_url: str | None = None) -> None:
        super().__init__(max_retries=0, pool_maxsize=MAX_DELIVERY_CONCURRENCY)
        self.origin = origin
        self.timeout = timeout
        self.base_url = base_url.rstrip("/") if base_url else None

    def rewrite(self, url: str) -> str:
        """The URL to call for `url`; raises `ValueError` for hosts outside `origin`."""
        if not self.origin.match(url):
            raise ValueError(f"{url!r} is not on the vendor API host this adapter serves; refusing to send it")
        if self.base_url is None:
            return url
        return self.origin.sub(lambda _origin: self.base_url or "", url, count=1)

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:  # type: ignore[override]
        routed = request.copy()
        routed.url = self.rewrite(request.url or "")
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(routed, **kwargs)
