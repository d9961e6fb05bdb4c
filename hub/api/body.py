"""Reading request bodies with a hard size limit, gzip included.

The limit applies to the decompressed size too: a 1 KiB gzip bomb must not
become a gigabyte in memory. RudderStack's SDKs gzip by default; Segment's
can.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from hub.errors import BadPayloadError, PayloadTooLargeError


async def read_body(request: Request, limit: int) -> bytes:
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
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = _gunzip(body, limit)
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadPayloadError(f"body: Content-Encoding is gzip but the body is not valid gzip ({exc})") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"body: larger than the {limit}-byte limit; send smaller batches")
