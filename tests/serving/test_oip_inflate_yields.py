"""A gzip body is inflated piece by piece with the event loop running in between: a bomb sent to
``/v2/.../infer`` (or ``/serve``) costs ~60 ms of inflating, which must not stall other requests."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from modelyard.errors import PayloadTooLarge
from modelyard.serving.codec import INFLATE_PIECE, read_body

LIMIT = 8 * 1024 * 1024


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


async def _inflate_while_ticking(body: bytes) -> tuple[int, BaseException | bytes]:
    """How often another task ran while ``read_body`` inflated ``body`` (sent as one chunk)."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running
    ticks = 0
    result: BaseException | bytes
    try:
        result = await read_body(_one(body), limit=LIMIT, content_encoding="gzip")
    except PayloadTooLarge as exc:
        result = exc
    done = True
    await task
    return ticks, result


def test_a_gzip_bomb_lets_other_tasks_run_while_it_is_inflated() -> None:
    bomb = gzip.compress(b"\0" * (LIMIT + 1024 * 1024), compresslevel=9)
    ticks, result = asyncio.run(_inflate_while_ticking(bomb))
    assert isinstance(result, PayloadTooLarge)
    assert ticks >= LIMIT // INFLATE_PIECE - 1, ticks


def test_a_large_honest_body_is_inflated_whole_in_pieces() -> None:
    payload = bytes(range(256)) * (LIMIT // 256)  # exactly the limit
    ticks, result = asyncio.run(_inflate_while_ticking(gzip.compress(payload, compresslevel=1)))
    assert result == payload
    assert ticks >= 8, ticks


@pytest.mark.parametrize("size", [0, 1, INFLATE_PIECE - 1, INFLATE_PIECE, INFLATE_PIECE + 1])
def test_bodies_around_the_piece_size_come_back_exactly(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    _, result = asyncio.run(_inflate_while_ticking(gzip.compress(payload)))
    assert result == payload
