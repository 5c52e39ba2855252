"""The stream worker: a consumer group that turns queue entries into results, losing none.

One consumer's loop::

    every claim interval: XAUTOCLAIM entries idle > claim_idle_ms   (a dead worker's batch)
    XREADGROUP GROUP g c COUNT batch BLOCK block_ms STREAMS s >
    decode each entry → group by endpoint → DataPlane.infer_many (one stacked engine call)
    one Lua call: SET result NX EX ttl + ZADD index, per entry; XACK (+ XDEL) the batch

At-least-once: an entry is acknowledged only after its result is stored, so a
worker killed mid-batch leaves its entries pending and another consumer claims
them. Result writes are ``SET NX``: a redelivered entry whose result exists is
a counted duplicate, never a second answer. Errors of one input (undecodable,
wrong shape, unknown endpoint, user code raising) are answered at once with
the error; transient failures (endpoint loading or unavailable, unexpected
worker errors) leave the entry pending for a retry. An entry delivered more
than ``max_failures`` times is answered with the last error, copied to the
dead-letter stream and acknowledged, so it never blocks the stream.

Redis going away (restart, failover, network) never ends a consumer: it backs
off (0.1 s doubling to 5 s) and reconnects; it then first re-reads its *own*
unacknowledged entries (``XREADGROUP ... 0``), whose results may not have been
stored, so they are answered at once rather than after ``claim_idle_ms``. A
group lost with the data (``NOGROUP``) is created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from modelyard.config import split_endpoint_key
from modelyard.errors import ModelyardError, Unavailable
from modelyard.metrics_labels import UNKNOWN_ENDPOINT
from modelyard.queue.entries import Entry, Item, text
from modelyard.queue.keys import QueueKeys, Result
from modelyard.queue.metrics import WorkerMetrics
from modelyard.queue.options import WorkerConfig, default_consumer_name
from modelyard.queue.scripts import COMMIT

log = logging.getLogger("modelyard.queue")
__all__ = ["QueueWorker", "WorkerConfig"]

InferMany = Callable[[str, str | None, list[Any]], Awaitable[tuple[str, list[Any]]]]
"""``DataPlane.infer_many``: ``(endpoint, version, bodies) -> (key, [value or error])``."""

REDIS_DOWN = (OSError, aioredis.ConnectionError, aioredis.TimeoutError)
"""Redis unreachable or not answering (``BusyLoadingError``, while it loads its data, is one)."""


class QueueWorker:
    """Consumes one stream with ``config.consumers`` concurrent consumers in this process."""

    def __init__(
        self,
        client: aioredis.Redis,
        infer_many: InferMany,
        config: WorkerConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis: Any = client  # redis-py's reply types are unions of every decoding
        self.infer_many = infer_many
        self.config = config
        self.keys = QueueKeys(config.stream)
        self.metrics = metrics or WorkerMetrics()
        self._commit = client.register_script(COMMIT)
        idle_s = config.claim_idle_ms / 1000
        self.claim_interval = config.claim_interval_s or min(max(idle_s / 2, 0.05), 5.0)
        self._last_claim: dict[str, float] = {}
        self.name = config.consumer or default_consumer_name()
        self._latency = self.metrics.latency.labels(config.stream)
        self.stopping = asyncio.Event()

    # -- setup and loops --------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start, so no earlier entry is skipped)."""
        try:
            await self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Consume until :meth:`stop`; the current batch of each consumer is finished first."""
        try:
            await self.ensure_group()
        except REDIS_DOWN as exc:  # the consumers retry and create the group (NOGROUP) later
            log.warning("Redis unreachable at start (%s); consumers will retry", exc)
        tasks = [
            asyncio.create_task(self._consume(self.config.consumer_name(i)))
            for i in range(self.config.consumers)
        ]
        tasks.append(asyncio.create_task(self._gauges()))
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()  # also when run() itself is cancelled
            tasks[-1].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.redis.hdel(self.keys.workers, self.name)
            for result in results:
                if isinstance(result, Exception):
                    log.error("queue consumer failed: %r", result)

    def stop(self) -> None:
        self.stopping.set()

    async def _consume(self, consumer: str) -> None:
        backoff = 0.1
        recover = True  # a consumer restarted under the same name has entries of its own
        while not self.stopping.is_set():
            try:
                if recover:
                    await self.recover(consumer)
                    recover = False
                await self.step(consumer)
                backoff = 0.1
                continue
            except REDIS_DOWN as exc:
                # its batch in hand may be unacknowledged (or unstored): re-read it once back
                log.warning(
                    "Redis unreachable from consumer %s (%s); retrying in %.1f s", consumer, exc, backoff
                )
                recover = True
            except Exception as exc:  # a consumer never dies: its entries stay pending, retried
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    log.warning("stream %s or its group is gone; creating it again", self.config.stream)
                    try:
                        await self.ensure_group()
                        continue
                    except Exception as again:
                        log.warning("creating the group of %s failed: %s", self.config.stream, again)
                else:
                    log.exception("consumer %s failed on a batch; going on", consumer)
            with contextlib.suppress(asyncio.TimeoutError):  # back off, but stop at once
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _gauges(self) -> None:
        # Ends on ``stopping``, not only on cancel: redis-py may turn a cancellation that
        # lands mid-command into an ordinary error, which this loop must survive.
        while not self.stopping.is_set():
            try:
                await self.update_gauges()
            except Exception as exc:
                log.debug("updating the queue gauges failed: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.gauge_interval_s)

    async def update_gauges(self) -> None:
        c, m = self.config, self.metrics
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(c.stream)
        pipe.xlen(self.keys.dead)
        pipe.xinfo_groups(c.stream)
        pipe.zremrangebyscore(self.keys.index, "-inf", time.time() * 1000 - c.result_ttl_s * 1000)
        pipe.hset(self.keys.workers, self.name, repr(time.time() * 1000))
        length, dead, groups, *_ = await pipe.execute()
        m.length.labels(c.stream).set(length)
        m.dead_length.labels(c.stream).set(dead)
        for group in groups:
            if text(group.get("name")) == c.group:
                pending = int(group.get("pending") or 0)
                m.pending.labels(c.stream, c.group).set(pending)
                lag = group.get("lag")
                if lag is None and c.delete_acked:
                    # Redis cannot tell (an entry not yet read was deleted); the stream holds
                    # exactly the unprocessed entries when acknowledged ones are deleted
                    lag = max(0, int(length) - pending)
                if lag is not None:
                    m.lag.labels(c.stream, c.group).set(lag)

    # -- one iteration ------------------------------------------------------------------------------
    async def step(self, consumer: str, block_ms: int | None = None) -> int:
        """Claim stale entries if due, else read new ones; process them. Entries handled."""
        now = time.monotonic()
        if now - self._last_claim.get(consumer, 0.0) >= self.claim_interval:
            self._last_claim[consumer] = now
            handled = await self.claim(consumer)
            if handled:
                return handled
        block = self.config.block_ms if block_ms is None else block_ms
        reply = await self.redis.xreadgroup(
            self.config.group,
            consumer,
            {self.config.stream: ">"},
            count=self.config.batch_size,
            block=block or None,
        )
        entries: list[Entry] = [(text(i), f) for _, items in (reply or []) for i, f in items if f is not None]
        if entries:
            await self.process(consumer, entries, {})
        return len(entries)

    async def claim(self, consumer: str) -> int:
        """XAUTOCLAIM entries idle longer than ``claim_idle_ms`` and process them."""
        c = self.config
        start, total = "0-0", 0
        while True:
            reply = await self.redis.xautoclaim(
                c.stream, c.group, consumer, c.claim_idle_ms, start_id=start, count=c.batch_size
            )
            start = text(reply[0])
            entries: list[Entry] = [(text(i), f) for i, f in reply[1] if f is not None]
            if entries:
                self.metrics.reclaimed.labels(c.stream).inc(len(entries))
                log.info("consumer %s claimed %d idle entries", consumer, len(entries))
                await self.process(consumer, entries, await self._deliveries(consumer, entries))
                total += len(entries)
            if start == "0-0" or total >= c.batch_size * 4:
                return total

    async def recover(self, consumer: str) -> int:
        """Process the entries delivered to ``consumer`` and not acknowledged (its own PEL).

        Run when a consumer starts and after Redis was unreachable: the batch it held may
        have lost its results with the connection. Results are written ``NX``, so a batch
        whose commit did go through only counts duplicates. Entries deleted meanwhile (nil
        fields) are acknowledged; entries that stay pending (transient failures) are left
        for the claim path, reading on past them.
        """
        c = self.config
        start, total = "0-0", 0
        while not self.stopping.is_set():
            reply = await self.redis.xreadgroup(c.group, consumer, {c.stream: start}, count=c.batch_size)
            got = [(text(i), f) for _, items in (reply or []) for i, f in items]
            if not got:
                break
            start = got[-1][0]
            gone = [i for i, f in got if not f]
            if gone:
                await self.redis.xack(c.stream, c.group, *gone)
            entries: list[Entry] = [(i, f) for i, f in got if f]
            if entries:
                log.info("consumer %s recovers %d entries it had not acknowledged", consumer, len(entries))
                await self.process(consumer, entries, await self._deliveries(consumer, entries))
                total += len(entries)
        return total

    async def _deliveries(self, consumer: str, entries: list[Entry]) -> dict[str, int]:
        """How often each of ``entries`` (now owned by ``consumer``) has been delivered."""
        c = self.config
        pending = await self.redis.xpending_range(
            c.stream, c.group, entries[0][0], entries[-1][0], len(entries) + 16, consumer
        )
        return {text(p["message_id"]): int(p["times_delivered"]) for p in pending}

    # -- a batch ------------------------------------------------------------------------------------
    async def process(self, consumer: str, entries: list[Entry], deliveries: dict[str, int]) -> None:
        c, m = self.config, self.metrics
        started = time.perf_counter()
        m.batch_size.labels(c.stream).observe(len(entries))
        items = [Item(i, f, deliveries.get(i, 1)) for i, f in entries]
        dead = [it for it in items if it.deliveries > c.max_failures]
        live = [it for it in items if it.deliveries <= c.max_failures]
        groups: dict[str, list[Item]] = {}
        for it in live:
            it.decode(self.config.endpoint)
            if it.error is None:
                groups.setdefault(it.endpoint, []).append(it)
        await asyncio.gather(*(self._infer(key, group) for key, group in groups.items()))
        done_ms = time.time() * 1000
        finished, retry = [], []
        for it in live:
            if it.transient is not None:
                retry.append(it)
                continue
            if it.result is None:
                it.result = it.error_result(it.error or ModelyardError("no result"))
            it.result.finished_ms, it.result.worker, it.result.deliveries = done_ms, consumer, it.deliveries
            try:
                it.blob = it.result.encode()
            except (TypeError, ValueError) as exc:
                err = ModelyardError(f"the endpoint's answer cannot be encoded for the queue: {exc}")
                it.result = it.error_result(err, it.result.endpoint)
                it.result.finished_ms, it.result.worker, it.result.deliveries = (
                    done_ms,
                    consumer,
                    it.deliveries,
                )
                it.blob = it.result.encode()
            finished.append(it)
        dups = await self._store(finished, done_ms)
        if dups:
            m.duplicates.labels(c.stream).inc(dups)
        ok: dict[str, int] = {}
        failed: dict[str, int] = {}
        latency = self._latency
        for it in finished:
            r = it.result
            assert r is not None
            if r.ok:
                key = r.endpoint or UNKNOWN_ENDPOINT  # the version that answered; never the entry's text
                ok[key] = ok.get(key, 0) + 1
            else:
                failed[r.kind or "error"] = failed.get(r.kind or "error", 0) + 1
            if r.enqueued_ms is not None:
                latency.observe(max(0.0, (done_ms - r.enqueued_ms) / 1000))
        for key, n in ok.items():
            m.processed.labels(c.stream, key).inc(n)
        for kind, n in failed.items():
            m.failed.labels(c.stream, kind).inc(n)
        if retry:
            await self._note_transient(retry)
        for it in dead:
            await self._dead_letter(consumer, it)
        m.batch_seconds.labels(c.stream).observe(time.perf_counter() - started)

    async def _infer(self, key: str, items: list[Item]) -> None:
        endpoint, version = split_endpoint_key(key)
        try:
            answered, outcomes = await self.infer_many(endpoint, version or None, [it.body for it in items])
        except Unavailable as exc:
            for it in items:
                it.transient = f"{exc.kind}: {exc.message}"
            return
        except ModelyardError as exc:  # NotFound, BadRequest: the same answer on every retry
            for it in items:
                it.error = exc
            return
        except Exception as exc:
            log.exception("inference on %s failed", key)
            for it in items:
                it.transient = f"error: {type(exc).__name__}: {exc}"
            return
        for it, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Unavailable):
                it.transient = f"{outcome.kind}: {outcome.message}"
            elif isinstance(outcome, ModelyardError):
                it.error = outcome
                it.result = it.error_result(outcome, answered)
            else:
                it.result = Result(uri=it.uri or "", ok=True, value=outcome, endpoint=answered)
                it.result.enqueued_ms = it.enqueued_ms()

    async def _store(self, finished: list[Item], now_ms: float) -> int:
        """Write results (NX) and acknowledge every finished entry in one call; duplicates."""
        c = self.config
        answerable = [it for it in finished if it.uri]
        unanswerable = [it for it in finished if not it.uri]
        for it in unanswerable:  # no uri, no result key: keep the entry for inspection
            await self.redis.xadd(self.keys.dead, it.dead_fields(it.result.error if it.result else "no uri"))
            self.metrics.dead_lettered.labels(c.stream).inc()
        if not finished:
            return 0
        keys = [c.stream, self.keys.index, self.keys.errors, self.keys.stats]
        keys += [self.keys.result(it.uri or "") for it in answerable]
        args: list[Any] = [c.group, c.result_ttl_s, repr(now_ms), int(c.delete_acked)]
        args.append(int(any(it.deliveries > 1 for it in finished)))
        for it in answerable:
            args += [it.blob, it.uri]
        args += [it.entry_id for it in finished]
        return int(await self._commit(keys=keys, args=args))

    async def _note_transient(self, items: list[Item]) -> None:
        c = self.config
        self.metrics.retried.labels(c.stream).inc(len(items))
        await self.redis.hset(self.keys.errors, mapping={it.entry_id: it.transient or "" for it in items})
        log.warning("%d entries of %s left pending for a retry: %s", len(items), c.stream, items[0].transient)

    async def _dead_letter(self, consumer: str, it: Item) -> None:
        """Answer an entry delivered too often with its last error and move it to the dead stream."""
        c = self.config
        last = await self.redis.hget(self.keys.errors, it.entry_id)
        reason = (
            text(last) if last else "a worker stopped while processing it (killed, crashed or out of memory)"
        )
        kind, _, message = reason.partition(": ") if ": " in reason else ("error", "", reason)
        gave_up = f"gave up after {it.deliveries - 1} failed deliveries: {message}"
        it.decode(self.config.endpoint)
        stored = False
        if it.uri:
            result = Result(uri=it.uri, ok=False, error=gave_up, kind=kind, endpoint=it.endpoint or None,
                            dead_lettered=True, deliveries=it.deliveries, enqueued_ms=it.enqueued_ms(),
                            finished_ms=time.time() * 1000, worker=consumer)  # fmt: skip
            stored = bool(
                await self.redis.set(self.keys.result(it.uri), result.encode(), nx=True, ex=c.result_ttl_s)
            )
            if stored:
                await self.redis.zadd(self.keys.index, {it.uri: time.time() * 1000})
        pipe = self.redis.pipeline(transaction=True)
        if stored or not it.uri:
            pipe.xadd(self.keys.dead, it.dead_fields(gave_up))
            pipe.hincrby(self.keys.stats, "dead_lettered", 1)
        pipe.xack(c.stream, c.group, it.entry_id)
        if c.delete_acked:
            pipe.xdel(c.stream, it.entry_id)
        pipe.hdel(self.keys.errors, it.entry_id)
        await pipe.execute()
        if stored or not it.uri:
            self.metrics.dead_lettered.labels(c.stream).inc()
            log.warning("dead-lettered entry %s (uri %r): %s", it.entry_id, it.uri, gave_up)
