"""The worker core in-process on the real Redis: results, bad input, reclaim, duplicates, dead letters.

The data plane is stood in for by :class:`SumPlane` (``y = x.sum(axis=1)``), which
behaves like ``DataPlane.infer_many``: routing errors raise for the whole call,
per-input errors come back in their slot. The end-to-end test runs the real one.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from modelyard.errors import InvalidInput, ModelyardError, NotFound, Unavailable
from modelyard.queue import InputQueue, OutputQueue
from modelyard.queue.codec import encode_inputs
from modelyard.queue.metrics import WorkerMetrics
from modelyard.queue.worker import QueueWorker, WorkerConfig


class SumPlane:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.flaky: set[str] = set()

    async def infer_many(
        self, endpoint: str, version: str | None, bodies: list[Any]
    ) -> tuple[str, list[Any]]:
        if endpoint == "missing":
            raise NotFound(f"endpoint {endpoint!r} not found in service 'default'")
        if endpoint == "loading":
            raise Unavailable(f"endpoint '{endpoint}/{version}' is still loading", retry_after=1)
        self.batches.append(len(bodies))
        out: list[Any] = []
        for body in bodies:
            x = np.asarray(body.get("x"))
            if body.get("tag") in self.flaky:
                out.append(Unavailable("upstream endpoint is overloaded"))
            elif x.ndim != 2 or x.shape[1] != 2:
                out.append(InvalidInput(f"input 'x' must have shape (n, 2), got {list(x.shape)}"))
            else:
                out.append({"y": x.sum(axis=1), "tag": body.get("tag")})
        return f"{endpoint}/{version}", out


def run(
    redis_url: str, config: WorkerConfig, body: Callable[[QueueWorker, SumPlane], Awaitable[Any]]
) -> tuple[SumPlane, WorkerMetrics, Any]:
    plane = SumPlane()
    metrics = WorkerMetrics(CollectorRegistry())

    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        worker = QueueWorker(client, plane.infer_many, config, metrics)
        await worker.ensure_group()
        try:
            return await body(worker, plane)
        finally:
            await client.aclose()

    return plane, metrics, asyncio.run(main())


async def drain(worker: QueueWorker, consumer: str = "c-0", rounds: int = 50) -> None:
    """Step until nothing is left to read or claim."""
    idle = 0
    for _ in range(rounds):
        idle = idle + 1 if await worker.step(consumer, block_ms=20) == 0 else 0
        if idle >= 2:
            return


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_inputs_become_results_in_one_batch(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue_batch([(f"u{i}", {"x": [[i, 0.5]], "tag": f"t{i}"}) for i in range(100)])
    config = WorkerConfig(stream=stream, batch_size=256)
    plane, metrics, _ = run(redis_url, config, lambda w, p: drain(w))
    assert plane.batches == [100]
    out = OutputQueue(redis_url, stream)
    for i in range(100):
        result = out.query(f"u{i}")
        assert result is not None and result.ok, result
        assert result.value["y"].tolist() == [i + 0.5] and result.value["tag"] == f"t{i}"
        assert result.endpoint == "sum/1" and result.deliveries == 1
        assert result.finished_ms is not None and result.enqueued_ms is not None
        assert result.finished_ms >= result.enqueued_ms
    assert rclient.xlen(stream) == 0  # acknowledged entries are deleted
    assert rclient.xpending(stream, "modelyard")["pending"] == 0
    assert out.stats() == {"results": 100}
    assert value(metrics, "modelyard_queue_processed_total", stream=stream, endpoint="sum/1") == 100
    assert value(metrics, "modelyard_queue_batch_size_count", stream=stream) == 1
    assert value(metrics, "modelyard_queue_latency_seconds_count", stream=stream) == 100
    # consuming results
    first = out.query_and_delete("u0")
    assert first is not None and first.uri == "u0" and out.query("u0") is None
    rest = out.dequeue()
    assert sorted(rest) == sorted(f"u{i}" for i in range(1, 100))
    assert out.dequeue() == {} and out.count() == 0


def test_bad_inputs_get_error_results_and_the_rest_goes_on(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    good = encode_inputs({"x": [[1.0, 2.0]]})
    rclient.xadd(stream, {"uri": "ok1", "data": good, "endpoint": "sum/1"})
    rclient.xadd(stream, {"uri": "no-data", "endpoint": "sum/1"})
    rclient.xadd(stream, {"uri": "garbage", "data": b"\x00\x01garbage", "endpoint": "sum/1"})
    rclient.xadd(stream, {"uri": "truncated", "data": good[:-4], "endpoint": "sum/1"})
    rclient.xadd(
        stream, {"uri": "shape", "data": encode_inputs({"x": [[1.0, 2.0, 3.0]]}), "endpoint": "sum/1"}
    )
    rclient.xadd(stream, {"uri": "unknown-ep", "data": good, "endpoint": "missing/1"})
    rclient.xadd(stream, {"uri": "no-ep", "data": good})
    rclient.xadd(stream, {"data": good, "endpoint": "sum/1"})  # no uri: cannot be answered
    rclient.xadd(stream, {"uri": "ok2", "data": b'{"x": [[3, 4]]}', "endpoint": "sum/1"})
    config = WorkerConfig(stream=stream)
    _, metrics, _ = run(redis_url, config, lambda w, p: drain(w))
    out = OutputQueue(redis_url, stream)
    results = {uri: out.query(uri) for uri in ("ok1", "ok2", "no-data", "garbage", "truncated",
                                               "shape", "unknown-ep", "no-ep")}  # fmt: skip
    assert results["ok1"] and results["ok1"].value["y"].tolist() == [3.0]
    assert results["ok2"] and results["ok2"].value["y"].tolist() == [7]
    expected = {
        "no-data": ("bad_request", "no 'data' field"),
        "garbage": ("bad_request", "neither MYQ1"),
        "truncated": ("bad_request", "lie outside"),
        "shape": ("invalid_input", "must have shape (n, 2), got [1, 3]"),
        "unknown-ep": ("not_found", "endpoint 'missing' not found"),
        "no-ep": ("bad_request", "names no endpoint"),
    }
    for uri, (kind, text) in expected.items():
        result = results[uri]
        assert result is not None and not result.ok and result.kind == kind, (uri, result)
        assert text in (result.error or ""), (uri, result.error)
        with pytest.raises(ModelyardError, match=re.escape(text)):
            result.unwrap()
    [dead] = out.dead_letters()
    assert "no 'uri' field" in dead["error"] and dead["endpoint"] == "sum/1"
    assert rclient.xlen(stream) == 0 and rclient.xpending(stream, "modelyard")["pending"] == 0
    assert (
        value(metrics, "modelyard_queue_failed_total", stream=stream, kind="bad_request") == 5
    )  # incl. the one without uri
    assert value(metrics, "modelyard_queue_dead_lettered_total", stream=stream) == 1


def test_entries_of_a_killed_consumer_are_reclaimed(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue_batch([(f"u{i}", {"x": [[i, 1]]}) for i in range(30)])
    # idle time long enough that the first drain, however slow the machine, claims nothing
    config = WorkerConfig(stream=stream, batch_size=10, claim_idle_ms=60_000)

    async def body(worker: QueueWorker, plane: SumPlane) -> None:
        # "dead" reads a batch and never answers it (as if killed with SIGKILL mid-batch)
        await worker.redis.xreadgroup("modelyard", "dead", {stream: ">"}, count=10)
        await drain(worker, "live")  # reads the other 20
        assert OutputQueue(redis_url, stream).count() == 20
        worker.config.claim_idle_ms = 100  # now "dead" has been idle long enough
        await asyncio.sleep(0.15)
        worker._last_claim.clear()
        await drain(worker, "live")

    _, metrics, _ = run(redis_url, config, body)
    out = OutputQueue(redis_url, stream)
    results = dict(out.results([f"u{i}" for i in range(30)]))
    assert all(r is not None and r.ok and r.value["y"].tolist() == [i + 1]
               for i, r in enumerate(results.values()))  # fmt: skip
    assert [results[f"u{i}"].deliveries for i in range(10)] == [2] * 10  # type: ignore[union-attr]
    assert value(metrics, "modelyard_queue_reclaimed_total", stream=stream) == 10
    assert rclient.xpending(stream, "modelyard")["pending"] == 0 and rclient.xlen(stream) == 0


def test_redelivered_entries_are_counted_duplicates(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue_batch([(f"u{i}", {"x": [[i, 0]]}) for i in range(5)])
    config = WorkerConfig(stream=stream, delete_acked=False)

    async def body(worker: QueueWorker, plane: SumPlane) -> None:
        reply = await worker.redis.xreadgroup("modelyard", "slow", {stream: ">"}, count=10)
        entries = [(i.decode(), f) for i, f in reply[0][1]]
        await worker.process("fast", entries, {i: 2 for i, _ in entries})
        # the slow consumer finishes late, with a different answer: the first one stays
        await worker.process(
            "slow", [(i, {**f, b"data": encode_inputs({"x": [[-1, -1]]})}) for i, f in entries], {}
        )

    _, metrics, _ = run(redis_url, config, body)
    out = OutputQueue(redis_url, stream)
    for i in range(5):
        result = out.query(f"u{i}")
        assert result is not None and result.value["y"].tolist() == [i] and result.worker == "fast"
    assert out.stats() == {"results": 5, "duplicates": 5}
    assert value(metrics, "modelyard_queue_duplicates_total", stream=stream) == 5
    assert rclient.xlen(stream) == 5  # delete_acked=False keeps them


def test_transient_failures_are_retried_then_dead_lettered(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue_batch([("bad", {"x": [[1, 1]], "tag": "flaky"}), ("good", {"x": [[2, 2]]})])
    q.enqueue_batch([("loading", {"x": [[1, 1]]})], endpoint="loading/1")
    config = WorkerConfig(stream=stream, claim_idle_ms=30, max_failures=2)

    async def body(worker: QueueWorker, plane: SumPlane) -> None:
        plane.flaky.add("flaky")
        for _ in range(40):
            await worker.step("c-0", block_ms=10)
            await asyncio.sleep(0.02)
            if await worker.redis.xlen(stream) == 0:
                return

    _, metrics, _ = run(redis_url, config, body)
    out = OutputQueue(redis_url, stream)
    good = out.query("good")
    assert good is not None and good.ok and good.deliveries == 1
    bad = out.query("bad")
    assert bad is not None and not bad.ok and bad.dead_lettered and bad.kind == "unavailable"
    assert bad.error == "gave up after 2 failed deliveries: upstream endpoint is overloaded"
    loading = out.query("loading")
    assert loading is not None and loading.dead_lettered and "still loading" in (loading.error or "")
    dead = {d["uri"]: d for d in out.dead_letters()}
    assert set(dead) == {"bad", "loading"} and dead["bad"]["deliveries"] == "3"
    assert dead["bad"]["data"] and dead["loading"]["endpoint"] == "loading/1"
    assert rclient.xlen(stream) == 0 and rclient.hlen(f"{stream}:errors") == 0
    assert value(metrics, "modelyard_queue_dead_lettered_total", stream=stream) == 2
    assert value(metrics, "modelyard_queue_retried_total", stream=stream) == 4
    assert out.stats()["dead_lettered"] == 2


def test_entry_that_kills_its_workers_is_dead_lettered(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue("poison", x=[[1, 1]])
    config = WorkerConfig(stream=stream, claim_idle_ms=1, max_failures=2)

    async def body(worker: QueueWorker, plane: SumPlane) -> None:
        for name in ("a", "b"):  # two workers read it and die
            if name == "a":
                await worker.redis.xreadgroup("modelyard", name, {stream: ">"}, count=1)
            else:
                await worker.redis.xautoclaim(stream, "modelyard", name, 0, count=1)
        await asyncio.sleep(0.01)
        await worker.claim("c")

    run(redis_url, config, body)
    result = OutputQueue(redis_url, stream).query("poison")
    assert result is not None and result.dead_lettered and result.deliveries == 3
    assert result.error == (
        "gave up after 2 failed deliveries: a worker stopped while processing it "
        "(killed, crashed or out of memory)"
    )


def test_run_and_predict_and_gauges(redis_url: str, rclient: redis.Redis, stream: str) -> None:
    config = WorkerConfig(stream=stream, consumers=2, block_ms=50, gauge_interval_s=0.05)
    plane = SumPlane()
    metrics = WorkerMetrics(CollectorRegistry())
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        worker = QueueWorker(client, plane.infer_many, config, metrics)
        holder["worker"], holder["loop"] = worker, asyncio.get_running_loop()
        task = asyncio.ensure_future(worker.run())
        started.set()
        await task
        await client.aclose()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert started.wait(5)
        q = InputQueue(redis_url, stream, endpoint="sum/1")
        assert q.predict({"x": [[1, 2]]}, timeout=5)["y"].tolist() == [3]
        assert q.predict(x=np.array([[5.0, 5.0]]), timeout=5)["y"].tolist() == [10.0]
        with pytest.raises(InvalidInput, match="got \\[3\\]"):
            q.predict(x=[1, 2, 3], timeout=5)
        with pytest.raises(NotFound):
            q.predict(x=[[1, 2]], endpoint="missing/1", timeout=5)
        assert OutputQueue(redis_url, stream).count() == 0  # predict deletes what it read
        assert OutputQueue(redis_url, stream).workers()  # its heartbeat
        time.sleep(0.2)  # a gauge update after the last entry
    finally:
        holder["loop"].call_soon_threadsafe(holder["worker"].stop)
        thread.join(10)
    assert not thread.is_alive()
    assert value(metrics, "modelyard_queue_stream_length", stream=stream) == 0
    assert value(metrics, "modelyard_queue_pending", stream=stream, group="modelyard") == 0


def test_results_expire_after_their_ttl_and_leave_the_index(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    q.enqueue("dead", x=[[1, 1]])
    q.enqueue_batch([(f"u{i}", {"x": [[i, 1]]}) for i in range(3)])
    config = WorkerConfig(stream=stream, result_ttl_s=2, claim_idle_ms=1, max_failures=1)
    out = OutputQueue(redis_url, stream)

    async def body(worker: QueueWorker, plane: SumPlane) -> None:
        # "dead" is read by a consumer that dies; the next claim dead-letters it (also with the TTL)
        await worker.redis.xreadgroup("modelyard", "gone", {stream: ">"}, count=1)
        await drain(worker)
        await asyncio.sleep(0.01)
        await worker.claim("c-0")
        keys = [f"{stream}:result:{uri}" for uri in ("u0", "u1", "u2", "dead")]
        for key in keys:
            assert 0 < rclient.pttl(key) <= 2000, key
        first = out.query("u0")
        assert first is not None and first.ok and first.value["y"].tolist() == [1]
        dead = out.query("dead")
        assert dead is not None and dead.dead_lettered
        assert out.count() == 4
        for _ in range(100):  # Redis expires them about 2 s after they were written
            if not rclient.exists(*keys):
                break
            await asyncio.sleep(0.05)
        # expired: the same as never answered
        assert out.query("u0") is None and out.query_and_delete("u1") is None
        assert out.query("dead") is None
        assert dict(out.results(["u0", "u2"])) == {"u0": None, "u2": None}
        assert out.dequeue(delete=False) == {}
        assert out.count() == 3  # the index still names them until a worker prunes it
        await worker.update_gauges()
        assert out.count() == 0 and out.finished() == []
        assert out.dequeue() == {}

    run(redis_url, config, body)


def test_gauges_show_lag_pending_length_and_dead_letters(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    ids = q.enqueue_batch([(f"u{i}", {"x": [[i, 1]]}) for i in range(10)])
    rclient.xadd(f"{stream}:dead", {"uri": "old", "error": "x"})

    def gauges(metrics: WorkerMetrics) -> tuple[float, ...]:
        return (
            value(metrics, "modelyard_queue_lag", stream=stream, group="modelyard"),
            value(metrics, "modelyard_queue_pending", stream=stream, group="modelyard"),
            value(metrics, "modelyard_queue_stream_length", stream=stream),
            value(metrics, "modelyard_queue_dead_letter_length", stream=stream),
        )

    async def body(worker: QueueWorker, plane: SumPlane) -> list[tuple[float, ...]]:
        seen = []
        await worker.update_gauges()
        seen.append(gauges(worker.metrics))
        await worker.redis.xreadgroup("modelyard", "slow", {stream: ">"}, count=3)
        await worker.update_gauges()
        seen.append(gauges(worker.metrics))
        await worker.redis.xdel(stream, ids[5])  # not yet read: Redis can no longer tell the lag
        assert (await worker.redis.xinfo_groups(stream))[0]["lag"] is None
        await worker.update_gauges()
        seen.append(gauges(worker.metrics))
        return seen

    _, _, seen = run(redis_url, WorkerConfig(stream=stream), body)
    assert seen == [
        (10, 0, 10, 1),  # nothing read yet
        (7, 3, 10, 1),  # three read by a consumer, not acknowledged
        (6, 3, 9, 1),  # lag from the length (acknowledged entries are deleted by default)
    ]
