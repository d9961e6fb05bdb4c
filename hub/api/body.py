"""Reading request bodies with a hard size limit, gzip included.

The limit applies to the decompressed size too: a 1 KiB gzip bomb must not
become a gigabyte in memory. RudderStack's SDKs gzip by default; Segment's
can. gzip (and its old name x-gzip, RFC 9110 8.4.1.3) is the one content
coding taken; uvicorn and Starlette decode none in requests, so any other
is refused (415) rather than parsed as if it were JSON.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from hub.errors import BadPayloadError, PayloadTooLargeError, UnsupportedMediaTypeError

GZIP = ("gzip", "x-gzip")
# Members a gzip body may have: what concatenating compressors make is a few, and each costs a decompressor
# and a loop on the event loop (26,000 empty members in 512 KiB took 50 ms).
MAX_GZIP_MEMBERS = 64


async def read_body(request: Request, limit: int) -> bytes:
    """The body, decoded, at most `limit` bytes both as sent and as decoded."""
    return decoded(await read_raw(request, limit), request.headers.get("content-encoding"), limit)


async def read_raw(request: Request, limit: int) -> bytes:
    """The body as sent, still encoded: kept apart from `decoded` so that a body refused as it is decoded can be
    quarantined as it came."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def decoded(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body undone of its Content-Encoding; BadPayloadError, UnsupportedMediaTypeError or PayloadTooLargeError
    when it cannot be."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in GZIP:
        return _gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding: {encoding!r} is not supported; send the body as it is or with gzip"
        )
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip stream (RFC 1952 allows several, as `cat a.gz b.gz` makes), each read to its end.

    A stream cut before a member's trailer (CRC-32 and length) is refused: its
    integrity was never checked, and what came through may be half a batch.
    Each member is fed in pieces that double from 64 bytes, so what zlib
    copies past a member's end stays as small as the member. More than
    `MAX_GZIP_MEMBERS` members are refused: this runs on the event loop,
    before any key is checked.
    """
    view = memoryview(body)
    decompressed: list[bytes] = []
    size = start = 0
    for _member in range(MAX_GZIP_MEMBERS):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        end, piece = start, 64
        while not decompressor.eof:
            if end == len(body):
                raise BadPayloadError("body: Content-Encoding is gzip but the gzip stream is cut off before its end")
            try:
                data = decompressor.decompress(view[end:end + piece], limit + 1 - size)
            except zlib.error as exc:
                raise BadPayloadError(f"body: Content-Encoding is gzip but the body is not valid gzip ({exc})") from None
            end, piece = min(end + piece, len(body)), piece * 2
            size += len(data)
            if size > limit:
                raise _too_large(limit)
            decompressed.append(data)
        start = end - len(decompressor.unused_data)
        if start == len(body):
            return b"".join(decompressed)
    raise BadPayloadError(f"body: a gzip stream of more than {MAX_GZIP_MEMBERS} members; compress the body as one")


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"body: larger than the {limit}-byte limit; send smaller batches")
