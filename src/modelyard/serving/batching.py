"""Dynamic batching: requests that arrive together run as ONE engine call.

A :class:`Batcher` belongs to one loaded endpoint version whose options ask for
``max_batch_size > 1``. Each request waits in a bounded queue; a worker takes up
to ``max_batch_size`` of them — as soon as the *expected* number is queued, or when
the oldest has waited ``max_batch_delay_ms`` — and hands them to the endpoint's
``run_many`` (pre/post-processing per request, one stacked engine call, per
request errors). Each request gets its own result back through its own future,
so answers cannot be crossed, and one bad request fails alone.

The expected number is the size of the previous batch (at most ``max_batch_size``):
the requests that came together last time are what comes together next time, so a
batch leaves as soon as they are in instead of always sitting out the delay, and a
lone client is not made to wait at all (its batch of one expects one). When fewer
come, the delay still bounds the wait and the expectation shrinks to what came;
while a batch computes, the next one forms, so under load batches grow by themselves
and the expectation with them. Measured on a 50-tree random forest (16 closed-loop
clients, ``max_batch_size`` 64, delay 2 ms, 2 workers): 1,661 → 3,188 requests/s, p99
26 → 15 ms (``bench/NOTES.md``). A full queue refuses at once with
:class:`~modelyard.errors.Overloaded` (503 + Retry-After), never an unbounded
wait.

Options (endpoint ``options``, also ``--max-batch-size``, ``--max-batch-delay-ms``,
``--max-queue`` on ``modelyard endpoint add/update``):

* ``max_batch_size`` (default 1: no batcher),
* ``max_batch_delay_ms`` (default 2),
* ``max_queue`` (default ``max(256, 4 * max_batch_size)``),
* ``batch_concurrency``: batches computed at once (default 1; more for remote engines).

Metrics: an optional :class:`BatchObserver` hears of every batch formed and
every request refused (the monitoring code plugs Prometheus in there).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelyard.engines.base import CollectFn
from modelyard.errors import ModelLoadError, ModelyardError, Overloaded

log = logging.getLogger("modelyard.batching")

RunMany = Callable[[list[Any], list[dict[str, Any]], list[CollectFn]], Awaitable[list[Any]]]
"""``(bodies, states, collects) -> [result or ModelyardError per body]``."""


class BatchObserver(Protocol):
    """Metrics hooks; every method is called on the event loop and must not block."""

    def batch(self, key: str, size: int, queue_wait_s: Sequence[float]) -> None:
        """A batch of ``size`` requests of endpoint version ``key`` starts; each one's queue wait."""

    def overloaded(self, key: str) -> None:
        """A request to ``key`` was refused because the queue was full."""


@dataclass(frozen=True)
class BatchOptions:
    max_batch_size: int = 1
    max_batch_delay_s: float = 0.002
    max_queue: int = 256
    concurrency: int = 1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> BatchOptions:
        """Read and check the batching keys of an endpoint's options (ModelLoadError if bad)."""

        def number(key: str, default: float, kind: type, minimum: float) -> Any:
            raw = options.get(key)
            if raw is None or raw == "":
                return default
            try:
                value = kind(float(raw)) if kind is int else kind(raw)
            except (TypeError, ValueError):
                raise ModelLoadError(f"option {key}={raw!r} is not a number") from None
            if kind is int and float(raw) != value:
                raise ModelLoadError(f"option {key}={raw!r} must be a whole number")
            if value < minimum:
                raise ModelLoadError(f"option {key}={raw!r} must be at least {minimum:g}")
            return value

        size = number("max_batch_size", 1, int, 1)
        delay_ms = number("max_batch_delay_ms", 2.0, float, 0)
        queue = number("max_queue", max(256, 4 * size), int, 1)
        concurrency = number("batch_concurrency", 1, int, 1)
        return cls(size, delay_ms / 1000.0, queue, concurrency)


class _Item:
    __slots__ = ("body", "collect", "enqueued", "future", "state")

    def __init__(self, body: Any, state: dict[str, Any], collect: CollectFn, future: asyncio.Future[Any]):
        self.body = body
        self.state = state
        self.collect = collect
        self.future = future
        self.enqueued = time.perf_counter()


class Batcher:
    """Gathers concurrent requests of one endpoint version into batches (see the module doc)."""

    def __init__(
        self,
        key: str,
        run_many: RunMany,
        options: BatchOptions,
        observer: BatchObserver | None = None,
    ) -> None:
        self.key = key
        self.run_many = run_many
        self.options = options
        self.observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self.batches = 0
        self.batched_requests = 0
        self.expected = 1
        """Requests the next batch waits for (besides the delay): the last batch's size."""

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"batcher-{self.key}-{i}")
            for i in range(self.options.concurrency)
        ]

    async def submit(self, body: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        """The result for ``body`` once its batch ran; its own error if it failed."""
        if self._closed:
            raise Overloaded(f"endpoint {self.key!r} is shutting down", retry_after=1)
        if len(self._queue) >= self.options.max_queue:
            if self.observer is not None:
                self.observer.overloaded(self.key)
            raise Overloaded(
                f"endpoint {self.key!r} has {len(self._queue)} requests queued (max_queue "
                f"{self.options.max_queue}); retry later",
                retry_after=1,
            )
        if self._wakeup is None:
            self._start()
        assert self._wakeup is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(body, state, collect, future))
        queued = len(self._queue)
        if queued == 1 or queued >= min(self.expected, self.options.max_batch_size):
            self._wakeup.set()
        return await future

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._queue and len(batch) < self.options.max_batch_size:
            item = self._queue.popleft()
            if not item.future.done():  # a cancelled waiter's request is dropped
                batch.append(item)
        return batch

    async def _gather(self) -> list[_Item]:
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].enqueued + self.options.max_batch_delay_s
            target = min(self.expected, self.options.max_batch_size)
            while len(self._queue) < target:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                self.expected = len(batch)
                return batch

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            if self._queue and self._wakeup is not None:
                self._wakeup.set()  # more waiting: let another worker (or the next round) take them
            now = time.perf_counter()
            self.batches += 1
            self.batched_requests += len(batch)
            if self.observer is not None:
                try:
                    self.observer.batch(self.key, len(batch), [now - item.enqueued for item in batch])
                except Exception:
                    log.exception("batch observer failed")
            try:
                results = await self.run_many(
                    [item.body for item in batch],
                    [item.state for item in batch],
                    [item.collect for item in batch],
                )
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.cancel()
                raise
            except Exception as exc:  # run_many isolates errors; this is a bug, fail the batch
                log.exception("batch of %s failed", self.key)
                error = (
                    exc if isinstance(exc, ModelyardError) else ModelyardError(f"{type(exc).__name__}: {exc}")
                )
                results = [error] * len(batch)
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    async def close(self) -> None:
        """Stop the workers; call once no request is queued or running (after retire's wait)."""
        self._closed = True
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        while self._queue:  # nothing should be here; never leave a waiter hanging
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Overloaded(f"endpoint {self.key!r} was unloaded", retry_after=1))
