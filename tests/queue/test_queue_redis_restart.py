"""Fault tests: Redis (append-only file, fsync always) killed and restarted under the queue.

Each test starts a ``redis-server`` of its own on a free port with its data in a temp
folder; the machine's Redis is not touched. The main test kills it with SIGKILL while a
real worker process holds a batch and two producers keep enqueuing, restarts it on the
same port from the same append-only file, and checks that every input whose ``enqueue``
returned has exactly one result, its own, and that the worker came back by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from modelyard.errors import Unavailable
from modelyard.queue import InputQueue, OutputQueue, QueueUnavailable
from modelyard.queue.metrics import WorkerMetrics
from modelyard.queue.worker import QueueWorker, WorkerConfig
from tests.queue.stack import PREPROCESS, Stack, free_port
from tests.queue.test_queue_worker import SumPlane

pytestmark = [pytest.mark.slow, pytest.mark.redis]

# the stack's Preprocess, 2 ms slower per input: a batch of 32 is held ~70 ms, so a kill
# timed on a non-empty pending list lands while the worker holds unacknowledged entries
SLOW_PREPROCESS = PREPROCESS.replace(
    "        x = np.asarray(body",
    "        import time\n\n        time.sleep(0.002)\n        x = np.asarray(body",
)


class RedisServer:
    """A private ``redis-server`` with AOF (``appendfsync always``); killed and restarted at will."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server); this test needs one")
        self.binary = binary
        self.dir = root / "redis-data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20) -> None:
        self.starts += 1
        log = open(self.dir / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - closed below
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "",
               "--protected-mode", "no"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():  # LOADING (a BusyLoadingError) until the AOF is read
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start: {self.log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        return (self.dir / f"server-{self.starts}.log").read_text(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.close()


def wait_until(fn: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what()}")


class Producer(threading.Thread):
    """Enqueues inputs ``<prefix>-<i>`` in small batches until stopped; records what was acknowledged."""

    def __init__(self, url: str, stream: str, prefix: str, xs: np.ndarray, per_call: int, patience: float):
        super().__init__(daemon=True)
        self.q = InputQueue(url, stream, endpoint="slow/1", reconnect_timeout=patience)
        self.prefix, self.xs, self.per_call = prefix, xs, per_call
        self.acked: set[int] = set()
        self.unacked: set[int] = set()
        self.failures: list[QueueUnavailable] = []
        self.longest_ok = 0.0
        self.crash: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        try:
            while not self.halt.is_set() and i + self.per_call <= len(self.xs):
                batch = list(range(i, i + self.per_call))
                i += self.per_call
                started = time.monotonic()
                try:
                    ids = self.q.enqueue_batch([(f"{self.prefix}-{j}", {"x": self.xs[j]}) for j in batch])
                except QueueUnavailable as exc:
                    self.failures.append(exc)
                    self.unacked.update(batch)
                else:
                    assert len(ids) == len(batch)
                    self.acked.update(batch)
                    self.longest_ok = max(self.longest_ok, time.monotonic() - started)
                self.halt.wait(0.02)
        except BaseException as exc:  # reported by the test
            self.crash = exc
        finally:
            self.q.close()


def test_every_acknowledged_input_gets_exactly_one_result_across_redis_restarts(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    started = time.monotonic()
    own_redis.start()
    stream = "restart"
    stack = Stack(tmp_path / "stack", own_redis.url)  # the server itself does not use Redis
    producers: list[Producer] = []
    try:
        stack.start_server()
        model = stack.deploy("slow", "1", source=SLOW_PREPROCESS)
        # default --claim-idle-ms (30 s): entries held at a kill must come back by the worker's
        # own recovery, not by the claim of idle entries, to be answered within the drain below
        worker = stack.start_worker("w", stream, "--redis-url", own_redis.url, "--endpoint", "slow/1",
                                    "--batch-size", "32", "--block-ms", "200")  # fmt: skip
        check = redis.Redis.from_url(own_redis.url)
        out = OutputQueue(own_redis.url, stream)
        warm = InputQueue(own_redis.url, stream, endpoint="slow/1")
        assert warm.predict(x=[0.0, 0.0, 0.0, 0.0], uri="warmup", timeout=60, delete=False) is not None
        warm.close()

        n = 20_000
        rng = np.random.default_rng(7)
        xs = {p: rng.normal(size=(n, 4)) * 10 + np.arange(n)[:, None] for p in ("a", "b")}
        # "a" waits out an outage (reconnect_timeout 30 s); "b" gives up at once (0 s)
        producers = [
            Producer(own_redis.url, stream, "a", xs["a"], per_call=5, patience=30.0),
            Producer(own_redis.url, stream, "b", xs["b"], per_call=1, patience=0.0),
        ]
        for p in producers:
            p.start()
        held: list[int] = []
        for outage in (1.0, 1.5, 1.0):
            time.sleep(1.5)
            # kill the moment the worker holds entries it has not acknowledged
            held.append(
                wait_until(
                    lambda: check.xpending(stream, "modelyard")["pending"], 10, lambda: "a batch in hand"
                )
            )
            own_redis.kill()
            time.sleep(outage)
            own_redis.start()
            assert worker.poll() is None, stack.worker_log("w")
        time.sleep(1.5)
        for p in producers:
            p.halt.set()
        for p in producers:
            p.join(40)
            assert not p.is_alive() and p.crash is None, p.crash
        chaos_end = time.monotonic()

        a, b = producers
        assert a.acked and not a.failures and not a.unacked  # rode out every outage
        assert a.longest_ok > 0.5  # at least one enqueue spanned an outage and still went through
        assert b.failures and b.acked  # failed clearly while Redis was down, went on after
        first = b.failures[0]
        assert isinstance(first, Unavailable) and isinstance(first, redis.ConnectionError)
        assert f"127.0.0.1:{own_redis.port}" in first.message and "'restart'" in first.message
        assert first.added == []

        acked = [f"a-{i}" for i in sorted(a.acked)] + [f"b-{i}" for i in sorted(b.acked)]

        def missing() -> list[str]:
            return [uri for uri, r in out.results(acked) if r is None]

        wait_until(lambda: not missing(), 15, lambda: f"results of {missing()[:5]}... (logs {stack.root})")
        # then the stream drains: inputs added by calls that raised are answered too
        wait_until(
            lambda: check.xlen(stream) == 0 and check.xpending(stream, "modelyard")["pending"] == 0,
            20,
            lambda: f"an empty stream ({check.xlen(stream)} left)",
        )
        drained = time.monotonic() - chaos_end

        # every acknowledged input has its own answer: the model's prediction for its own row
        expected = {p: model.predict(xs[p]) for p in ("a", "b")}
        redelivered = 0
        for uri, result in out.results(acked):
            assert result is not None and result.ok and result.uri == uri, result
            prefix, i = uri.split("-")
            np.testing.assert_allclose(result.value["y"], [expected[prefix][int(i)]], rtol=1e-9)
            redelivered += result.deliveries > 1
        # exactly one result each: every stored result was written once (stats count the
        # SET NX that stored one; a second write of any uri would make them more than the keys)
        keys = {k.decode() for k in check.scan_iter(match=f"{stream}:result:*", count=1000)}
        stats = out.stats()
        assert stats["results"] == len(keys) == out.count()
        attempted = {f"{p.prefix}-{i}" for p in producers for i in p.acked | p.unacked} | {"warmup"}
        assert {k.removeprefix(f"{stream}:result:") for k in keys} <= attempted
        assert out.dead_letters() == []
        # a kill landed while the worker held a batch, and that batch was answered after it
        assert redelivered >= 1, (held, stack.worker_log("w"))

        # the worker recovered by itself: alive, no crash, no busy loop while Redis was down
        assert worker.poll() is None
        log = stack.worker_log("w")
        assert "Traceback" not in log, log
        unreachable = log.count("Redis unreachable")
        assert 3 <= unreachable <= 60, log
        assert q_predict(own_redis.url, stream) is not None  # still serving
        stack.stop_workers()
        assert worker.returncode == 0, stack.worker_log("w")
        check.close()
        out.close()
        print(
            f"\n{len(acked)} acknowledged inputs ({len(b.unacked)} refused while Redis was down), "
            f"kills with {held} entries pending, {redelivered} answered after redelivery, "
            f"{stats.get('duplicates', 0)} duplicates, drained {drained:.1f} s after the last restart; "
            f"{unreachable} reconnect warnings; {time.monotonic() - started:.1f} s in all"
        )
    finally:
        for p in producers:
            p.halt.set()
        stack.close()


def q_predict(url: str, stream: str) -> Any:
    q = InputQueue(url, stream, endpoint="slow/1")
    try:
        return q.predict(x=[1.0, 2.0, 3.0, 4.0], timeout=30)
    finally:
        q.close()


def test_enqueue_and_wait_while_redis_is_down(own_redis: RedisServer) -> None:
    """Down: a clear ``QueueUnavailable`` after ``reconnect_timeout``. Back in time: it goes through."""
    own_redis.start()
    q = InputQueue(own_redis.url, "s", reconnect_timeout=0.3)
    out = OutputQueue(own_redis.url, "s")
    q.enqueue("before", x=[1.0])
    own_redis.kill()

    t = time.monotonic()
    with pytest.raises(QueueUnavailable) as info:
        q.enqueue_batch([("u1", {"x": [1.0]}), ("u2", {"x": [2.0]})])
    assert 0.3 <= time.monotonic() - t < 5
    err = info.value
    assert (
        isinstance(err, Unavailable) and isinstance(err, redis.ConnectionError) and err.kind == "unavailable"
    )
    assert f"127.0.0.1:{own_redis.port}" in err.message and "0 of the 2 inputs were added" in err.message
    assert err.added == [] and isinstance(err.__cause__, redis.ConnectionError)
    with pytest.raises(QueueUnavailable, match=r"no result for 'before'.*unreachable"):
        out.wait("before", timeout=0.3)

    # Redis back within reconnect_timeout: enqueue and wait ride it out
    q.reconnect_timeout = 20
    restarter = threading.Timer(0.5, own_redis.start)
    restarter.start()
    try:
        t = time.monotonic()
        ids = q.enqueue_batch([("u1", {"x": [1.0]}), ("u2", {"x": [2.0]})])
        assert time.monotonic() - t >= 0.4 and len(ids) == 2
    finally:
        restarter.join()
    check = redis.Redis.from_url(own_redis.url)
    # the entry added before the kill survived it (fsync always), then the two after it
    assert [f[b"uri"] for _, f in check.xrange("s")] == [b"before", b"u1", b"u2"]
    own_redis.kill()
    writer = threading.Timer(0.5, lambda: (own_redis.start(), _store(own_redis.url, "before")))
    writer.start()
    try:
        assert out.wait("before", timeout=20, delete=True).value == 1
    finally:
        writer.join()
    assert out.query("before") is None and out.count() == 0  # read, then deleted
    check.close()
    q.close()
    out.close()


def _store(url: str, uri: str) -> None:
    from modelyard.queue import Result

    client = redis.Redis.from_url(url)
    client.set(f"s:result:{uri}", Result(uri=uri, ok=True, value=1).encode())
    client.zadd("s:results", {uri: 1})
    client.close()


def test_worker_started_before_redis_waits_for_it(own_redis: RedisServer) -> None:
    """A worker whose Redis is not up yet keeps retrying and consumes once it is."""
    plane = SumPlane()
    config = WorkerConfig(stream="s", block_ms=50)

    async def main() -> list[int]:
        client = aioredis.Redis.from_url(own_redis.url)
        worker = QueueWorker(client, plane.infer_many, config, WorkerMetrics(CollectorRegistry()))
        task = asyncio.ensure_future(worker.run())
        try:
            await asyncio.sleep(0.5)
            assert not task.done(), task  # did not die on the refused connection
            await asyncio.to_thread(own_redis.start)
            q = InputQueue(own_redis.url, "s", endpoint="sum/1")
            answer = await asyncio.to_thread(q.predict, x=[[1, 2]], timeout=20)
            q.close()
            return list(answer["y"])
        finally:
            worker.stop()
            await task
            await client.aclose()

    assert asyncio.run(main()) == [3]


def test_a_consumer_answers_its_own_unacknowledged_entries_at_once(
    redis_url: str, rclient: redis.Redis, stream: str
) -> None:
    """Entries delivered to a consumer that lost its batch are answered when it runs again,
    long before ``claim_idle_ms`` (here a minute) would hand them to anyone."""
    config = WorkerConfig(stream=stream, consumer="c", block_ms=50, claim_idle_ms=60_000)
    q = InputQueue(redis_url, stream, endpoint="sum/1")
    rclient.xgroup_create(stream, "modelyard", id="0", mkstream=True)
    q.enqueue_batch([(f"u{i}", {"x": [[i, 1]]}) for i in range(5)])
    # "c-0" read them and then lost its connection (or its process) before storing results
    assert len(rclient.xreadgroup("modelyard", "c-0", {stream: ">"}, count=10)[0][1]) == 5
    rclient.xdel(stream, rclient.xrange(stream)[0][0])  # one was deleted meanwhile: just acknowledged
    plane = SumPlane()

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        worker = QueueWorker(client, plane.infer_many, config, WorkerMetrics(CollectorRegistry()))
        task = asyncio.ensure_future(worker.run())
        out = OutputQueue(redis_url, stream)
        try:
            for i in range(1, 5):
                result = await asyncio.to_thread(out.wait, f"u{i}", 5)
                assert result.value["y"].tolist() == [i + 1] and result.deliveries == 2, result
        finally:
            worker.stop()
            await task
            await client.aclose()
            out.close()

    asyncio.run(main())
    assert rclient.xpending(stream, "modelyard")["pending"] == 0
    assert OutputQueue(redis_url, stream).query("u0") is None
    q.close()
