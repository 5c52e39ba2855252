"""InputQueue on the real Redis: entry layout, batching, backpressure (wait or raise, never drop)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from modelyard.queue import InputQueue, OutputQueue, QueueFull
from modelyard.queue.codec import decode_inputs


def test_enqueue_writes_uri_data_endpoint_and_time(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    q = InputQueue(redis_url, stream, endpoint="iris/1")
    before = time.time() * 1000
    entry_id = q.enqueue("u1", x=np.array([[1.0, 2.0]], dtype=np.float32), name="a", raw=b"\x00")
    [(got_id, fields)] = rclient.xrange(stream)
    assert got_id.decode() == entry_id
    assert fields[b"uri"] == b"u1" and fields[b"endpoint"] == b"iris/1"
    assert before <= float(fields[b"t"]) <= time.time() * 1000
    body = decode_inputs(fields[b"data"])
    assert body["x"].dtype == np.float32 and body["x"].tolist() == [[1.0, 2.0]]
    assert body["name"] == "a" and body["raw"] == b"\x00"
    q.close()


def test_enqueue_batch_pipelines_in_order(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    q = InputQueue(redis_url, stream)
    ids = q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(1200)], endpoint="m/2", chunk=500)
    assert len(ids) == 1200 and rclient.xlen(stream) == 1200
    entries = rclient.xrange(stream)
    assert [f[b"uri"].decode() for _, f in entries] == [f"u{i}" for i in range(1200)]
    assert all(f[b"endpoint"] == b"m/2" for _, f in entries)
    assert q.pending() == 1200
    with pytest.raises(ValueError, match="non-empty string"):
        q.enqueue("", x=[1])


def test_over_the_pending_limit_raise_mode_raises_and_keeps_nothing(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, max_pending=5, on_full="raise")
    q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(5)])
    with pytest.raises(QueueFull, match="holds 5 pending entries; 1 more would pass the limit of 5"):
        q.enqueue("u5", x=[5])
    with pytest.raises(QueueFull):
        q.enqueue_batch([("a", {}), ("b", {})])
    assert rclient.xlen(stream) == 5


def test_over_the_pending_limit_wait_mode_waits_for_room(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, max_pending=3, on_full="wait", full_timeout=10)
    ids = q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(3)])

    def consume() -> None:  # what a worker does once an entry is answered
        time.sleep(0.3)
        rclient.xdel(stream, ids[0])

    thread = threading.Thread(target=consume)
    started = time.monotonic()
    thread.start()
    q.enqueue("u3", x=[3])
    waited = time.monotonic() - started
    thread.join()
    assert 0.25 <= waited < 5
    assert rclient.xlen(stream) == 3


def test_wait_mode_gives_up_after_its_timeout(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    q = InputQueue(redis_url, stream, max_pending=1, on_full="wait", full_timeout=0.3)
    q.enqueue("u0", x=[0])
    started = time.monotonic()
    with pytest.raises(QueueFull, match=r"waited 0.3 s"):
        q.enqueue("u1", x=[1])
    assert time.monotonic() - started >= 0.3
    assert rclient.xlen(stream) == 1


class _SmallRedis(InputQueue):
    """Redis reports no maxmemory here; pretend a limit to exercise the memory check."""

    limit = 0

    def _full(self, n: int) -> str | None:
        real = self.redis.info

        def info(section: str) -> dict[str, int]:
            data = dict(real(section))
            data["maxmemory"] = self.limit
            return data

        self.redis.info = info
        try:
            return super()._full(n)
        finally:
            del self.redis.info


def test_memory_fraction_limit(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    used = int(rclient.info("memory")["used_memory"])
    q = _SmallRedis(redis_url, stream, max_pending=None, max_memory_fraction=0.5, on_full="raise")
    q.limit = used  # used > 0.5 * limit
    with pytest.raises(QueueFull, match=r"above the fraction 0\.5"):
        q.enqueue("u0", x=[0])
    q.limit = used * 10
    q._memory_at = 0.0
    q.enqueue("u0", x=[0])
    assert rclient.xlen(stream) == 1


def test_output_queue_is_empty_before_any_worker(redis_url: str, stream: str) -> None:
    out = OutputQueue(redis_url, stream)
    assert out.query("nope") is None
    assert out.query_and_delete("nope") is None
    assert out.dequeue() == {}
    assert out.count() == 0 and out.stats() == {}
    with pytest.raises(TimeoutError, match="no result for 'nope'"):
        out.wait("nope", timeout=0.05)
