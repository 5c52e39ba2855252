"""One loaded endpoint version: user code + engine, and the request path through them.

The request path is ``preprocess → engine → postprocess``. When all three are
synchronous (the common case: sklearn with a plain ``Preprocess``) the whole
chain runs in ONE hop to the worker pool, not one per stage; async hooks and
async engines run on the event loop. In-flight requests are counted so a
replaced version is unloaded only after its last request finished (a request
that started on the old code finishes on the old code).
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
from modelyard.errors import ModelyardError, Unprocessable
from modelyard.preprocess import UserCode, wrap_user_error
from modelyard.serving import stacking
from modelyard.serving.batching import Batcher, BatchObserver, BatchOptions
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


class LoadedEndpoint:
    """A ready endpoint version. Created by :func:`load_endpoint`, retired by :meth:`retire`."""

    def __init__(
        self,
        config: EndpointConfig,
        engine: Engine,
        user: UserCode | None,
        executor: Executor,
        batch_observer: BatchObserver | None = None,
        inline_max_s: float = 0.0,
    ) -> None:
        self.config = config
        self.key = config.key
        self.fingerprint = config.fingerprint()
        self.engine = engine
        self.user = user
        self.executor = executor
        self.inflight = 0
        self.instruments: EndpointInstruments | None = None
        """Metric children of this version (bound by the data plane); stage times go there."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._pre = user.preprocess if user is not None and user.has_preprocess else None
        self._post = user.postprocess if user is not None and user.has_postprocess else None
        self._pre_async = self._pre is not None and user is not None and user.is_async("preprocess")
        self._post_async = self._post is not None and user is not None and user.is_async("postprocess")
        engine_sync = engine.runs_sync()
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
        self.batcher: Batcher | None = None
        """Set when options ask for ``max_batch_size > 1``: requests then run in batches."""
        if batching.max_batch_size > 1:
            self.batcher = Batcher(self.key, self._run_batch, batching, batch_observer)

    async def run(
        self, body: Any, state: dict[str, Any], collect: CollectFn, executor: Executor | None = None
    ) -> Any:
        """Run one request through the endpoint; errors come out as ModelyardError.

        ``executor`` overrides the worker pool (nested ``send_request`` calls use their own
        pool so a pipeline cannot starve itself of threads).
        """
        self.inflight += 1
        self._idle.clear()
        try:
            if self.batcher is not None and executor is None:  # nested calls skip the queue
                return await self.batcher.submit(body, state, collect)
            if self._all_sync:
                if self.placement.inline and executor is None:
                    try:
                        return self._run_sync(body, state, collect)
                    except RunInPool:
                        self.placement.pin_to_pool()
                loop = asyncio.get_running_loop()
                slots = self._slots
                if (
                    slots is None
                    or executor is not None
                    or not (self._threads_fixed or self.placement.cpu_bound)
                ):
                    return await loop.run_in_executor(
                        executor or self.executor, self._run_sync, body, state, collect, perf_counter()
                    )
                submitted = perf_counter()
                async with slots:
                    return await loop.run_in_executor(
                        self.executor, self._run_sync, body, state, collect, submitted
                    )
            return await self._run_async(body, state, collect)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

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
                raise wrap_user_error(exc, "preprocess") from None
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
                raise wrap_user_error(exc, "postprocess") from None
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
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, fn, data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise wrap_user_error(exc, name) from None

    async def _run_async(self, body: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        started = perf_counter()
        data = body
        if self._pre is not None:
            data = await self._stage(self._pre, self._pre_async, "preprocess", data, state, collect)
        preprocessed = perf_counter()
        try:
            data = await self.engine.predict(data, state, collect)
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

    # -- many requests at once (queue workers, the dynamic batcher) ------------------------------
    async def run_many(
        self,
        bodies: list[Any],
        collect: CollectFn,
        states: list[dict[str, Any]] | None = None,
        collects: list[CollectFn] | None = None,
    ) -> list[Any | ModelyardError]:
        """Run several requests; each item is its result or its own error.

        Pre/post-processing run per item. When the engine is batchable and the
        preprocessed items stack — arrays with the same trailing shape, or dicts with
        the same keys whose arrays do, row counts equal within an item — they run as
        ONE engine call whose output (array, dict or list of arrays) is split back by
        row counts; if that call fails, each item is retried alone so one bad input
        fails alone. ``states``/``collects`` give each item its own (the batcher's
        requests), else each gets a fresh state and ``collect``.
        """
        states = states if states is not None else [{} for _ in bodies]
        collects = collects if collects is not None else [collect] * len(bodies)
        self.inflight += 1
        self._idle.clear()
        if self.instruments is not None:
            self.instruments.batch_size.observe(len(bodies))
        try:
            if self._all_sync:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self.executor, self._run_many_sync, bodies, states, collects
                )
            return await self._run_many_async(bodies, states, collects)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def _run_batch(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        return await self.run_many(bodies, collects[0], states, collects)

    async def _run_many_async(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        """Async hooks or engine: stages per item concurrently, one stacked engine call."""
        n = len(bodies)
        results: list[Any] = [None] * n
        failed = [False] * n
        data: list[Any] = list(bodies)
        pre: list[float | None] = [None] * n
        post: list[float | None] = [None] * n

        async def stage(fn: Callable[..., Any], is_async: bool, name: str, i: int, took: list[Any]) -> None:
            started = perf_counter()
            try:
                data[i] = await self._stage(fn, is_async, name, data[i], states[i], collects[i])
            except ModelyardError as exc:
                results[i], failed[i] = exc, True
            took[i] = perf_counter() - started

        if self._pre is not None:
            await asyncio.gather(*(stage(self._pre, self._pre_async, "preprocess", i, pre) for i in range(n)))
        live = [i for i in range(n) if not failed[i]]
        items = [data[i] for i in live]
        outputs: list[Any] = [None] * len(live)
        seconds = [0.0] * len(live)

        async def one(j: int, attempt: float) -> None:
            i = live[j]
            started = perf_counter()
            try:
                outputs[j] = await self.engine.predict(items[j], states[i], collects[i])
            except ModelyardError as exc:
                outputs[j] = exc
            except Exception as exc:
                outputs[j] = self._process_error(exc)
            seconds[j] = attempt + perf_counter() - started

        async def group_call(group: list[int]) -> None:
            started = perf_counter()
            stacked = stacking.stack([items[j] for j in group]) if len(group) > 1 else None
            split = None
            if stacked is not None:
                first = live[group[0]]
                try:
                    split = stacking.split(
                        await self.engine.predict(stacked[0], states[first], collects[first]), stacked[1]
                    )
                except Exception:
                    split = None  # one call per item, so only the bad input fails
            attempt = perf_counter() - started
            if split is not None:
                for j, out in zip(group, split, strict=True):
                    outputs[j] = out
                    seconds[j] = attempt
            else:
                await asyncio.gather(*(one(j, attempt) for j in group))

        await asyncio.gather(*(group_call(g) for g in self._groups(items)))
        for i, out in zip(live, outputs, strict=True):
            if isinstance(out, ModelyardError):
                results[i], failed[i] = out, True
            else:
                data[i] = out
        if self._post is not None:
            await asyncio.gather(
                *(
                    stage(self._post, self._post_async, "postprocess", i, post)
                    for i in range(n)
                    if not failed[i]
                )
            )
        for i in range(n):
            if not failed[i]:
                results[i] = data[i]
        self._batch_stages(failed, pre, dict(zip(live, seconds, strict=True)), post)
        return results

    def _run_many_sync(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        n = len(bodies)
        results: list[Any] = [None] * n
        failed = [False] * n
        data: list[Any] = list(bodies)
        pre: list[float | None] = [None] * n
        post: list[float | None] = [None] * n
        if self._pre is not None:
            for i in range(n):
                started = perf_counter()
                try:
                    data[i] = self._pre(bodies[i], states[i], collects[i])
                except Exception as exc:
                    results[i], failed[i] = _user_outcome(exc, "preprocess"), True
                pre[i] = perf_counter() - started
        live = [i for i in range(n) if not failed[i]]
        outputs, process = self._predict_stacked([data[i] for i in live], states, live, collects)
        for i, out in zip(live, outputs, strict=True):
            if isinstance(out, ModelyardError):
                results[i], failed[i] = out, True
            else:
                results[i] = out
        if self._post is not None:
            for i in range(n):
                if not failed[i]:
                    started = perf_counter()
                    try:
                        results[i] = self._post(results[i], states[i], collects[i])
                    except Exception as exc:
                        results[i], failed[i] = _user_outcome(exc, "postprocess"), True
                    post[i] = perf_counter() - started
        self._batch_stages(failed, pre, dict(zip(live, process, strict=True)), post)
        return results

    def _batch_stages(
        self,
        failed: list[bool],
        pre: list[float | None],
        process: dict[int, float],
        post: list[float | None],
    ) -> None:
        """Stage times of the answered requests of a batch (queue wait: the batcher's observer).

        Pre/postprocess run per request, so each request records its own time. The engine
        call is shared: every request of a stacked call records that call's full time as its
        ``process`` stage, because that is how long the stage took for it. So, as for an
        unbatched endpoint, each answered request adds one sample per stage and a request's
        stages add up to its latency; the compute cost per batch is ``process`` divided by
        ``modelyard_batch_size``. Failed requests record nothing, as unbatched ones.
        """
        inst = self.instruments
        if inst is None:
            return
        for i, bad in enumerate(failed):
            if not bad:
                inst.stages(None, pre[i], process[i], post[i])

    def _predict_stacked(
        self, items: list[Any], states: list[dict[str, Any]], index: list[int], collects: list[CollectFn]
    ) -> tuple[list[Any], list[float]]:
        """Outputs (or errors) of ``items`` and the seconds each spent in the engine."""
        outputs: list[Any] = [None] * len(items)
        seconds = [0.0] * len(items)
        for group in self._groups(items):
            started = perf_counter()
            if len(group) > 1:
                stacked = stacking.stack([items[j] for j in group])
                split = None
                if stacked is not None:
                    first = index[group[0]]
                    try:
                        split = stacking.split(
                            self.engine.predict_sync(stacked[0], states[first], collects[first]), stacked[1]
                        )
                    except Exception:
                        split = None  # one call per item below, so only the bad input fails
                if split is not None:
                    took = perf_counter() - started
                    for j, out in zip(group, split, strict=True):
                        outputs[j] = out
                        seconds[j] = took
                    continue
            attempt = perf_counter() - started  # a failed stacked call was spent on these too
            for j in group:
                i = index[j]
                alone = perf_counter()
                try:
                    outputs[j] = self.engine.predict_sync(items[j], states[i], collects[i])
                except ModelyardError as exc:
                    outputs[j] = exc
                except Exception as exc:
                    outputs[j] = self._process_error(exc)
                seconds[j] = attempt + perf_counter() - alone
        return outputs, seconds

    def _groups(self, items: list[Any]) -> list[list[int]]:
        """Positions of items that can run as one call; items that do not stack run alone."""
        if not self.engine.batchable or len(items) < 2:
            return [[j] for j in range(len(items))]
        groups: dict[Any, list[int]] = {}
        alone: list[list[int]] = []
        for j, item in enumerate(items):
            key = stacking.signature(item)
            if key is None:
                alone.append([j])
            else:
                groups.setdefault(key, []).append(j)
        return [*groups.values(), *alone]

    def _process_error(self, exc: Exception) -> ModelyardError:
        if self.user is not None and self.user.has_process and self.engine.name.startswith("custom"):
            return wrap_user_error(exc, "process")
        return _engine_error(self.engine, exc)

    async def retire(self) -> None:
        """Wait for in-flight (and queued) requests to finish, then unload engine and user code."""
        await self._idle.wait()
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


def _user_outcome(exc: Exception, hook: str) -> ModelyardError:
    return exc if isinstance(exc, ModelyardError) else wrap_user_error(exc, hook)


Loader = Callable[[EndpointConfig], Awaitable[LoadedEndpoint]]
