"""One loaded endpoint version: user code + engine, and the request path through them.

The request path is ``preprocess → engine → postprocess``. When all three are
synchronous (the common case: sklearn with a plain ``Preprocess``) the whole
chain runs in ONE hop to the worker pool, not one per stage; async hooks and
async engines run on the event loop. In-flight requests are counted so a
replaced version is unloaded only after its last request finished (a request
that started on the old code finishes on the old code), and never while one of
its worker threads still runs (:mod:`modelyard.serving.inflight`). Requests get
their deadline (option ``timeout_s``) here; a CPU-bound version's requests wait
for their one-at-a-time turn in a queue bounded by option ``max_queue``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from time import perf_counter, thread_time
from typing import TYPE_CHECKING, Any

from modelyard.config import EndpointConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelyardError, Overloaded, Unprocessable
from modelyard.preprocess import UserCode, wrap_user_error
from modelyard.serving.batching import Batcher, BatchObserver, BatchOptions
from modelyard.serving.batchrun import ManyRuns
from modelyard.serving.inflight import RETRY_AFTER_S, Deadline, VersionInflight, timeout_option
from modelyard.serving.inline import (
    InlinePolicy,
    RunInPool,
    inline_limit_s,
    pool_threads,
    voluntary_switches,
)

if TYPE_CHECKING:
    from modelyard.metrics import EndpointInstruments

log = logging.getLogger("modelyard.serving")


def _engine_error(engine: Engine, exc: Exception) -> Unprocessable:
    return Unprocessable(f"engine {engine.name!r} could not process the input: {type(exc).__name__}: {exc}")


class LoadedEndpoint(ManyRuns):
    """A ready endpoint version. Created by :func:`load_endpoint`, retired by :meth:`retire`.

    One request's path is here; many at once (batches, queue reads) in
    :class:`~modelyard.serving.batchrun.ManyRuns`."""

    def __init__(
        self,
        config: EndpointConfig,
        engine: Engine,
        user: UserCode | None,
        executor: Executor,
        batch_observer: BatchObserver | None = None,
        inline_max_s: float = 0.0,
        timeout_s: float = 0.0,
        retire_wait_s: float = 60.0,
    ) -> None:
        """``timeout_s``: the default deadline (the ``timeout_s`` option overrides it; 0: none);
        ``retire_wait_s``: how long :meth:`retire` waits for requests before cancelling them."""
        self.config = config
        self.key = config.key
        self.fingerprint = config.fingerprint()
        self.engine = engine
        self.user = user
        self._errors = user.errors if user is not None else None
        """Where user-code errors are described, logged and kept (see preprocess_errors)."""
        self.executor = executor
        self.guard = VersionInflight(self.key)
        """Requests in flight and worker threads still running this version's code."""
        self.timeout_s = timeout_option(config.options, timeout_s)
        self.retire_wait_s = retire_wait_s
        self.instruments: EndpointInstruments | None = None
        """Metric children of this version (bound by the data plane); stage times go there."""
        self._pre = user.preprocess if user is not None and user.has_preprocess else None
        self._post = user.postprocess if user is not None and user.has_postprocess else None
        self._pre_async = self._pre is not None and user is not None and user.is_async("preprocess")
        self._post_async = self._post is not None and user is not None and user.is_async("postprocess")
        engine_sync = engine.runs_sync()
        self._engine_sync = engine_sync
        self._all_sync = engine_sync and not self._pre_async and not self._post_async
        limit_s = inline_limit_s(config.options, inline_max_s)
        calls_endpoints = user is not None and user.calls_endpoints
        if calls_endpoints:
            limit_s = 0.0  # a pipeline's hooks wait on the event loop: never run them on it
        self.placement = InlinePolicy(limit_s)
        """Whether the synchronous chain runs on the event loop or in the pool (measured)."""
        threads = pool_threads(config.options, calls_endpoints)
        self._threads_fixed = threads is not None
        self._slots = asyncio.Semaphore(threads or 1) if threads or not calls_endpoints else None
        """How many of this version's chains may be in the pool at once (see serving.inline):
        the ``threads`` option, else one while the chain is measured CPU-bound."""
        batching = BatchOptions.from_options(config.options)
        self._waiting = 0
        self._max_waiting = batching.max_queue
        """Requests that may wait for a slot (option ``max_queue``): past it, 503 at once."""
        self.batcher: Batcher | None = None
        """Set when options ask for ``max_batch_size > 1``: requests then run in batches."""
        if batching.max_batch_size > 1:
            self.batcher = Batcher(self.key, self._run_batch, batching, batch_observer)

    async def run(
        self, body: Any, state: dict[str, Any], collect: CollectFn, executor: Executor | None = None
    ) -> Any:
        """Run one request through the endpoint; errors come out as ModelyardError.

        ``executor`` overrides the worker pool (nested ``send_request`` calls use their own
        pool so a pipeline cannot starve itself of threads). Past the deadline the wait is
        cancelled and :class:`~modelyard.errors.DeadlineExceeded` raised (a chain already
        running in a thread finishes there, and keeps this version loaded until it does).
        """
        guard = self.guard
        task = guard.enter()
        deadline: Deadline | None = None
        try:
            batched = self.batcher is not None and executor is None  # nested calls skip the queue
            if self._all_sync and not batched and self.placement.inline and executor is None:
                try:
                    return self._run_sync(body, state, collect)  # on the loop: nothing to time out
                except RunInPool:
                    self.placement.pin_to_pool()
            if self.timeout_s > 0 and task is not None:
                deadline = Deadline(task, self.timeout_s)
            if batched:
                assert self.batcher is not None
                return await self.batcher.submit(body, state, collect)
            if not self._all_sync:
                return await self._run_async(body, state, collect)
            slots = self._slots
            if slots is None or executor is not None or not (self._threads_fixed or self.placement.cpu_bound):
                return await guard.in_pool(
                    executor or self.executor, self._run_sync, body, state, collect, perf_counter()
                )
            submitted = perf_counter()
            await self._take_turn(slots)
            try:
                return await guard.in_pool(self.executor, self._run_sync, body, state, collect, submitted)
            finally:
                slots.release()
        except asyncio.CancelledError:
            error = guard.cancelled(task, deadline)
            if error is None:
                raise
            raise error from None
        finally:
            if deadline is not None:
                deadline.cancel()
            guard.leave(task)

    @property
    def inflight(self) -> int:
        """Requests (and batches) of this version running now."""
        return self.guard.requests

    async def _take_turn(self, slots: asyncio.Semaphore) -> None:
        """A slot in the pool; waiting for it only while fewer than ``max_queue`` already wait."""
        if not slots.locked():
            await slots.acquire()
            return
        if self._waiting >= self._max_waiting:
            raise Overloaded(
                f"endpoint {self.key!r} has {self._waiting} requests waiting for their turn in the "
                f"worker pool (max_queue {self._max_waiting}); retry later",
                retry_after=RETRY_AFTER_S,
            )
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1

    def _run_sync(
        self, body: Any, state: dict[str, Any], collect: CollectFn, submitted: float | None = None
    ) -> Any:
        started = perf_counter()
        placement = self.placement
        measure = placement.measure()
        if measure:
            on_loop = placement.inline
            started_cpu = thread_time()
            switches = voluntary_switches() if on_loop else 0
        data = body
        if self._pre is not None:
            try:
                data = self._pre(data, state, collect)
            except ModelyardError:
                raise
            except Exception as exc:
                raise wrap_user_error(exc, "preprocess", self._errors) from None
        preprocessed = perf_counter()
        try:
            data = self.engine.predict_sync(data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise self._process_error(exc) from None
        processed = perf_counter()
        if self._post is not None:
            try:
                data = self._post(data, state, collect)
            except ModelyardError:
                raise
            except Exception as exc:
                raise wrap_user_error(exc, "postprocess", self._errors) from None
        finished = perf_counter()
        if measure:
            placement.observe(
                finished - started,
                thread_time() - started_cpu,
                voluntary_switches() - switches if on_loop else 0,
            )
        inst = self.instruments
        if inst is not None:
            inst.stages(
                started - submitted if submitted is not None else None,
                preprocessed - started if self._pre is not None else None,
                processed - preprocessed,
                finished - processed if self._post is not None else None,
            )
        return data

    async def _stage(
        self,
        fn: Callable[..., Any],
        is_async: bool,
        name: str,
        data: Any,
        state: dict[str, Any],
        collect: CollectFn,
    ) -> Any:
        try:
            if is_async:
                return await fn(data, state, collect)
            return await self.guard.in_pool(self.executor, fn, data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise wrap_user_error(exc, name, self._errors) from None

    async def _run_async(self, body: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        started = perf_counter()
        data = body
        if self._pre is not None:
            data = await self._stage(self._pre, self._pre_async, "preprocess", data, state, collect)
        preprocessed = perf_counter()
        try:
            data = await self._predict(data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise self._process_error(exc) from None
        processed = perf_counter()
        if self._post is not None:
            data = await self._stage(self._post, self._post_async, "postprocess", data, state, collect)
        inst = self.instruments
        if inst is not None:
            inst.stages(
                None,
                preprocessed - started if self._pre is not None else None,
                processed - preprocessed,
                perf_counter() - processed if self._post is not None else None,
            )
        return data

    def _predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Awaitable[Any]:
        """The engine's call from the event loop: a sync engine on this version's pool, counted
        (not ``asyncio.to_thread``, which a cancellation would leave running unseen)."""
        if self._engine_sync:
            return self.guard.in_pool(self.executor, self.engine.predict_sync, data, state, collect)
        return self.engine.predict(data, state, collect)

    def _process_error(self, exc: Exception) -> ModelyardError:
        if self.user is not None and self.user.has_process and self.engine.name.startswith("custom"):
            return wrap_user_error(exc, "process", self._errors)
        return _engine_error(self.engine, exc)

    async def retire(self) -> None:
        """Wait for in-flight (and queued) requests to finish, at most ``retire_wait_s`` (then
        they are cancelled: 503 + Retry-After), and for every worker thread running this
        version's code to return; then unload engine and user code."""
        await self.guard.drain(self.retire_wait_s)
        if self.batcher is not None:
            await self.batcher.close()
        await asyncio.get_running_loop().run_in_executor(self.executor, self._unload)

    def _unload(self) -> None:
        for what, fn in (("engine", self.engine.unload), ("user code", self._unload_user)):
            try:
                fn()
            except Exception:
                log.exception("unloading %s of %s failed", what, self.key)

    def _unload_user(self) -> None:
        if self.user is not None:
            self.user.unload()


Loader = Callable[[EndpointConfig], Awaitable[LoadedEndpoint]]
