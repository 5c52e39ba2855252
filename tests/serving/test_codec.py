"""Body limits, gzip (including bombs) and JSON decoding on the data plane."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from modelyard.errors import BadRequest, PayloadTooLarge, Unprocessable
from modelyard.serving.codec import decode_body, encode_json, read_body


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read(data: bytes, limit: int, encoding: str = "") -> bytes:
    return asyncio.run(read_body(_chunks(data), limit=limit, content_encoding=encoding))


def test_plain_body_under_limit_is_returned_whole() -> None:
    assert read(b"x" * 5000, limit=5000) == b"x" * 5000


def test_plain_body_over_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="limit of 4999 bytes"):
        read(b"x" * 5000, limit=4999)


def test_gzip_body_is_inflated() -> None:
    payload = b'{"x0": 1, "x1": 2}' * 10
    assert read(gzip.compress(payload), limit=10_000, encoding="gzip") == payload


def test_gzip_bomb_is_refused_without_inflating_it_whole() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024))  # 200 MB of zeros, ~200 KB compressed
    assert len(bomb) < 1024 * 1024
    with pytest.raises(PayloadTooLarge, match="decompressed request body"):
        read(bomb, limit=1024 * 1024, encoding="gzip")


def test_gzip_inflating_to_exactly_the_limit_passes() -> None:
    payload = b"a" * 4096
    assert read(gzip.compress(payload), limit=4096, encoding="gzip") == payload


def test_malformed_gzip_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="malformed gzip"):
        read(b"this is not gzip at all", limit=10_000, encoding="gzip")


def test_truncated_gzip_is_a_bad_request() -> None:
    data = gzip.compress(b"hello world" * 100)
    with pytest.raises(BadRequest, match="malformed gzip"):
        read(data[: len(data) // 2], limit=10_000, encoding="gzip")


def test_deflate_is_accepted() -> None:
    assert read(zlib.compress(b"abc"), limit=100, encoding="deflate") == b"abc"


def test_unknown_content_encoding_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="unsupported Content-Encoding 'br'"):
        read(b"abc", limit=100, encoding="br")


@pytest.mark.parametrize("content_type", ["application/json", "", "application/x-www-form-urlencoded"])
def test_json_bodies_parse(content_type: str) -> None:
    assert decode_body(b'{"x0": 1}', content_type) == {"x0": 1}


def test_malformed_json_names_the_problem() -> None:
    with pytest.raises(BadRequest, match="malformed JSON body"):
        decode_body(b'{"x0": 1,', "application/json")


def test_binary_bodies_stay_bytes() -> None:
    assert decode_body(b"\x89PNG", "image/png") == b"\x89PNG"


def test_encode_json_handles_numpy_values() -> None:
    value = {
        "a": np.arange(3, dtype=np.int64),
        "b": np.float32(1.5),
        "c": np.array([[1.0, 2.0]])[:, ::-1],  # not contiguous
        "d": np.array(["x", "y"]),
        "e": (1, 2),
    }
    assert encode_json(value) == b'{"a":[0,1,2],"b":1.5,"c":[[2.0,1.0]],"d":["x","y"],"e":[1,2]}'


def test_encode_json_refuses_unencodable_values_clearly() -> None:
    with pytest.raises(Unprocessable, match="not JSON-encodable"):
        encode_json({"x": object()})
