"""Request bodies in, response bodies out: size limits, gzip, JSON.

The limit is enforced on the bytes as they arrive and again on the bytes a
gzip stream inflates to, chunk by chunk with ``max_length``, so a gzip bomb is
refused after inflating at most ``limit + 1`` bytes, never whole. It inflates
:data:`INFLATE_PIECE` bytes at a time and lets the event loop run in between, so
a large body (or a bomb) does not hold up other requests (8 MiB in one call: ~60 ms).
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadRequest, PayloadTooLarge, Unprocessable

INFLATE_PIECE = 256 * 1024
"""Most bytes inflated between two turns of the event loop."""

JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/json", "")
"""Content types read as JSON. ``curl -d`` sends form-urlencoded, so it counts as JSON here."""


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than the limit of {limit} bytes")


async def read_body(chunks: AsyncIterator[bytes], *, limit: int, content_encoding: str = "") -> bytes:
    """Collect a body from ``chunks``, inflating gzip, refusing anything over ``limit``."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit, "request body")
            parts.append(chunk)
        return b"".join(parts)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {content_encoding!r}: use gzip or none")
    # wbits 47 accepts both gzip and zlib headers; deflate without header needs -15
    inflater = zlib.decompressobj(47 if encoding != "deflate" else 15 + 32)
    out: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                piece = inflater.decompress(data, min(limit - size + 1, INFLATE_PIECE))
                size += len(piece)
                if size > limit:
                    raise _too_large(limit, "decompressed request body")
                out.append(piece)
                data = inflater.unconsumed_tail
                if data:
                    await asyncio.sleep(0)  # let other requests run between pieces
            if inflater.eof:
                break
        tail = inflater.flush(limit - size + 1)
        size += len(tail)
        if size > limit:
            raise _too_large(limit, "decompressed request body")
        out.append(tail)
    except zlib.error as exc:
        raise BadRequest(f"malformed {encoding} body: {exc}") from None
    if not inflater.eof:
        raise BadRequest(f"malformed {encoding} body: stream ends before its end marker")
    return b"".join(out)


@functools.lru_cache(maxsize=256)  # a handful of distinct values in practice; bounded anyway
def is_json_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in JSON_TYPES


def decode_body(body: bytes, content_type: str) -> Any:
    """JSON content types parse to Python objects (400 if malformed); other types stay bytes."""
    if not is_json_type(content_type):
        return body
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "SUO":
            return [_default(x) if not isinstance(x, str | int | float) else x for x in obj.tolist()]
        return obj.tolist()
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # torch tensors, pandas objects
        return tolist()
    raise TypeError(f"cannot encode a {type(obj).__name__} as JSON")


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_json(value: Any) -> bytes:
    """JSON bytes for any prediction: numpy arrays and scalars included."""
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except TypeError as exc:
        raise Unprocessable(f"the endpoint returned a value that is not JSON-encodable: {exc}") from None
