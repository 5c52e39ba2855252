"""How big a tensor a caller may declare, checked before anything is allocated for it.

An Open Inference Protocol request declares each tensor's shape apart from its data, so a
150-byte request can declare ``[100000000]`` BYTES elements, or ``[0, 2**62]``, which has no
element but which numpy cannot reshape to. The decoders
(:mod:`modelyard.serving.oip_tensors`, :mod:`modelyard.serving.oip_grpc_tensors`) first
compare the exact element count (:func:`element_count`, a Python int: no overflow) with what
was sent, then hold the shape to ``limit`` elements (:func:`check_limit`): the body limit,
``Settings.max_body_bytes``, which is also the gRPC receive limit, since every element sent
takes at least one byte of the body. Headers and echoed values are bounded too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from modelyard.errors import BadRequest, InvalidInput

MAX_RANK = 32
"""Most dimensions a tensor may have (numpy's own limit is 64; no model takes more than a few)."""

_HEADER_LENGTH_DIGITS = 18
"""Longest ``Inference-Header-Content-Length`` read: 18 digits fit an int64 and any body."""


def brief(value: Any, most: int = 120) -> str:
    """``repr(value)`` cut to about ``most`` characters (a long list is not repr'd whole):
    what a caller sent goes into messages bounded."""
    if isinstance(value, list) and len(value) > 16:
        text = f"{repr(value[:16])[:-1]}, ... ({len(value)} items)]"
    else:
        text = repr(value)
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def element_count(name: str, shape: Sequence[int], what: str = "input") -> int:
    """The number of elements ``shape`` declares (exact); InvalidInput past :data:`MAX_RANK`
    dimensions. Nothing is allocated: compare it with what was sent before allocating."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"{what} {name!r}: shape has {len(shape)} dimensions, more than the {MAX_RANK} supported"
        )
    return math.prod(shape)


def check_limit(name: str, shape: Sequence[int], limit: int, what: str = "input") -> None:
    """InvalidInput unless the product of ``shape``'s non-zero dimensions is at most ``limit``
    (the count itself for a non-empty tensor; for an empty one what numpy would need to
    reshape to it)."""
    product = 1
    for dim in shape:
        if dim:
            product *= dim
            if product > limit:
                break
    if product <= limit:
        return
    if 0 in shape:
        raise InvalidInput(
            f"{what} {name!r}: shape {list(shape)} is out of range: its non-zero dimensions "
            f"multiply to more than {limit}, the most elements a request can carry (max_body_bytes)"
        )
    raise InvalidInput(
        f"{what} {name!r}: shape {list(shape)} declares {math.prod(shape)} elements, more than the "
        f"{limit} a request can carry (max_body_bytes: each element takes at least one byte)"
    )


def parse_header_length(value: str) -> int | None:
    """``Inference-Header-Content-Length`` as sent (``""``: none): ASCII digits only, so
    ``"²"`` (a digit to :meth:`str.isdigit`, not to :func:`int`) is a 400, not a 500."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= _HEADER_LENGTH_DIGITS):
        raise BadRequest(
            f"Inference-Header-Content-Length {brief(value, 40)} is not a length in bytes "
            f"(ASCII digits, at most {_HEADER_LENGTH_DIGITS})"
        )
    return int(value)
