"""The start of a webhook receiver's answer, as the delivery log keeps it: a masked excerpt.

The receiver's status decides a delivery's outcome; of its body the log keeps
only an excerpt, so only that much is read (`AnswerStart`), and only briefly
once the status is in: an answer streamed slowly, or a large or compressed one,
costs neither time nor memory, and an accepted delivery is never retried for it.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from contextlib import suppress

import aiohttp
import httpx

from hub.pii import mask_text

RESPONSE_EXCERPT_CHARS = 200
# What is read of a receiver's answer: 4 bytes a character at most (UTF-8), one character more than the excerpt
# keeps, so an answer that goes on is known to be cut.
RESPONSE_EXCERPT_BYTES = 4 * (RESPONSE_EXCERPT_CHARS + 1)
# How long the body is waited for once the status is in: the status decides, the body is only the log's excerpt.
RESPONSE_BODY_SECONDS = 1.0
# What a cut leaves of its last word: back to a blank or a punctuation mark of JSON, a form or a sentence, so a
# compact JSON answer keeps all but its cut value. An address holding one ("jane=doe@") is cut there, and what
# is left before it is no address for the masking to miss.
_LAST_WORD = re.compile(r"[^\s,;:{}\[\]\"'<>()=]*$")


_INFLATED = ("gzip", "x-gzip", "deflate")


class AnswerStart:
    """The start of a receiver's answer, fed raw chunks as they arrive: at most `RESPONSE_EXCERPT_BYTES` are kept.

    The hub asks for ``Accept-Encoding: identity`` (an excerpt gains nothing from compression); a receiver that
    compresses all the same has its gzip or deflate body inflated only as far as the excerpt needs, so a
    65 KB gzip bomb costs what a plain answer does. Other codings are not read.
    """

    def __init__(self, content_encoding: str | None, charset: str | None) -> None:
        coding = (content_encoding or "").strip().lower() or "identity"
        # gzip, or deflate's zlib stream: MAX_WBITS | 32 reads either header.
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if coding in _INFLATED else None
        self._unread_coding = None if coding == "identity" or coding in _INFLATED else coding
        self._charset = charset or "utf-8"
        self._kept = bytearray()
        self.whole = False  # read to the answer's end
        self._stopped = self._unread_coding is not None  # nothing more to read (or nothing readable)

    def wants_more(self) -> bool:
        return not (self._stopped or self.whole) and len(self._kept) < RESPONSE_EXCERPT_BYTES

    def feed(self, raw: bytes) -> None:
        """Keep the start of `raw` (inflated when compressed); b"" is the end of the answer."""
        if not raw:
            self.whole = True
            return
        room = RESPONSE_EXCERPT_BYTES - len(self._kept)
        if self._inflater is None:
            self._kept += raw[:room]
            return
        try:
            self._kept += self._inflater.decompress(raw, room)  # never more than `room` bytes out
        except zlib.error:
            self._stopped = True  # corrupt: what was inflated before stays
            return
        self.whole = self._inflater.eof

    def excerpt(self) -> str:
        """The masked excerpt for the delivery log."""
        if self._unread_coding is not None:
            return f"({self._unread_coding}-coded answer not read)"
        try:
            text = self._kept.decode(self._charset, errors="replace")
        except LookupError:  # a charset Python does not know
            text = self._kept.decode("utf-8", errors="replace")
        return excerpt(text, whole=self.whole)


def read_start(response: httpx.Response, seconds: float) -> str:
    """The excerpt of a streamed httpx answer, reading for `seconds` at most (give or take one read's timeout)."""
    start = AnswerStart(response.headers.get("content-encoding"), response.charset_encoding)
    deadline = time.monotonic() + seconds
    with suppress(httpx.TransportError):  # the status is in: a body cut short, or too slow, is excerpted so far
        chunks = response.iter_raw()
        while start.wants_more() and time.monotonic() < deadline:
            start.feed(next(chunks, b""))
    return start.excerpt()


async def read_start_async(response: aiohttp.ClientResponse, seconds: float) -> str:
    """The excerpt of an aiohttp answer (read undecoded), reading for `seconds` at most."""
    start = AnswerStart(response.headers.get("content-encoding"), response.charset)
    with suppress(asyncio.TimeoutError, aiohttp.ClientError):  # the status is in: excerpted so far, as above
        async with asyncio.timeout(seconds):
            while start.wants_more():
                start.feed(await response.content.read(RESPONSE_EXCERPT_BYTES))
    if not start.whole:
        response.close()  # the rest of the answer is not wanted: drop the connection rather than drain it
    return start.excerpt()


def excerpt(text: str, *, whole: bool = True) -> str:
    """The receiver's answer as the delivery log keeps it: its start, masked. A word the cut falls in is left
    out, as an email cut short ("jane.doe@exa") no longer looks like one to the masking; `whole` is False when
    the answer was not read to its end, so its last word may be cut too."""
    if len(text) > RESPONSE_EXCERPT_CHARS or not whole:
        text = _LAST_WORD.sub("…", text[:RESPONSE_EXCERPT_CHARS], count=1)
    return mask_text(text)
