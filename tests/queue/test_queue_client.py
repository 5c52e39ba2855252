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


def _read(rclient: redis.Redis, stream: str, count: int, consumer: str = "c") -> list[bytes]:
    reply = rclient.xreadgroup("modelyard", consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def test_the_backlog_is_the_groups_unprocessed_entries_not_the_streams_length(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    """Workers with --keep-acked leave acknowledged entries in the stream: they are not a backlog."""
    rclient.xgroup_create(stream, "modelyard", id="0", mkstream=True)
    q = InputQueue(redis_url, stream, max_pending=5, on_full="raise")
    q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(5)])
    assert q.pending() == 5  # lag 5
    with pytest.raises(QueueFull, match="holds 5 pending entries"):
        q.enqueue("u5", x=[5])
    read = _read(rclient, stream, 3)
    assert q.pending() == 5  # lag 2 + 3 read, not yet acknowledged
    with pytest.raises(QueueFull):
        q.enqueue("u5", x=[5])
    rclient.xack(stream, "modelyard", *read)  # acknowledged and kept
    assert rclient.xlen(stream) == 5 and q.pending() == 2 and q.room() == 3
    q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(5, 8)])
    assert rclient.xlen(stream) == 8 and q.pending() == 5
    with pytest.raises(QueueFull, match="holds 5 pending entries; 1 more would pass the limit of 5"):
        q.enqueue("u8", x=[8])
    assert rclient.xlen(stream) == 8
    # a producer naming a group that no worker made yet counts every entry in the stream
    other = InputQueue(redis_url, stream, max_pending=100, group="not-made-yet")
    assert other.pending() == 8


def test_unknown_lag_falls_back_to_the_streams_length(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    """Redis reports lag nil once an entry not yet read is deleted; the length bounds the backlog."""
    rclient.xgroup_create(stream, "modelyard", id="0", mkstream=True)
    q = InputQueue(redis_url, stream, max_pending=10)
    ids = q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(5)])
    done = _read(rclient, stream, 2)
    rclient.xack(stream, "modelyard", *done)
    rclient.xdel(stream, *done)  # what workers do by default
    rclient.xdel(stream, ids[3])  # deleted before any worker read it
    [group] = rclient.xinfo_groups(stream)
    assert group["lag"] is None  # the case under test
    assert q.pending() == 2  # u2 and u4: exact, since acknowledged entries are deleted


def test_no_stream_and_no_group_count_zero(redis_url: str, stream: str) -> None:
    q = InputQueue(redis_url, stream, max_pending=1, on_full="raise")
    assert q.pending() == 0 and q.room() == 1
    assert InputQueue(redis_url, stream, max_pending=None).room() is None
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        InputQueue(redis_url, stream, max_pending=0)


def test_a_batch_larger_than_the_limit_goes_through_in_wait_mode(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    """max_pending 3, a batch of 20 in chunks of 500: added as a worker frees room, in order."""
    rclient.xgroup_create(stream, "modelyard", id="0", mkstream=True)
    q = InputQueue(redis_url, stream, max_pending=3, on_full="wait", full_timeout=10)
    seen: list[str] = []
    most = 0
    stop = threading.Event()

    def worker() -> None:
        nonlocal most
        client = redis.Redis.from_url(redis_url)
        while not stop.is_set() and len(seen) < 20:
            reply = client.xreadgroup("modelyard", "w", {stream: ">"}, count=2, block=50)
            for _, items in reply or []:
                # what is unprocessed now: what this read took plus what waits
                most = max(most, len(items) + int(client.xinfo_groups(stream)[0]["lag"] or 0))
                ids = [entry_id for entry_id, _ in items]
                seen.extend(f[b"uri"].decode() for _, f in items)
                time.sleep(0.01)
                client.xack(stream, "modelyard", *ids)
        client.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ids = q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(20)], chunk=500)
        thread.join(10)
    finally:
        stop.set()
        thread.join(10)
    assert len(ids) == 20 and len(set(ids)) == 20
    assert seen == [f"u{i}" for i in range(20)]
    assert 1 <= most <= 3
    assert rclient.xlen(stream) == 20  # acknowledged and kept: the limit still let them through


def test_a_batch_that_can_never_fit_raises_at_once_and_adds_nothing(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    for on_full in ("raise", "wait"):
        q = InputQueue(redis_url, stream, max_pending=3, on_full=on_full)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(QueueFull, match=r"4 entries can never fit .* limit is 3 pending entries"):
            q.wait_for_room(4)
        assert time.monotonic() - started < 1
    q = InputQueue(redis_url, stream, max_pending=3, on_full="raise")
    with pytest.raises(QueueFull, match="4 entries can never fit"):
        q.enqueue_batch([(f"u{i}", {"x": [i]}) for i in range(4)])
    assert rclient.xlen(stream) == 0
    # raise mode is all or nothing: 2 fit, a batch of 2 more does not, and none of it is added
    q.enqueue_batch([("a", {}), ("b", {})])
    with pytest.raises(QueueFull, match="holds 2 pending entries; 2 more"):
        q.enqueue_batch([("c", {}), ("d", {})], chunk=1)
    assert rclient.xlen(stream) == 2
    with pytest.raises(ValueError, match="non-empty string"):
        q.enqueue_batch([("e", {}), ("", {})])
    assert rclient.xlen(stream) == 2
