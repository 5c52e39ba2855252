"""Many requests of one endpoint version at once: the dynamic batcher's batches and queue
workers' reads (:meth:`ManyRuns.run_many`).

Split from :mod:`modelyard.serving.endpoint` along the seam between one request's path and a
batch's: pre/postprocess per item, ONE stacked engine call where the items stack
(:mod:`modelyard.serving.stacking`), each item's own error when it fails alone. A batch is
counted in the version's in-flight work like a request (never evicted: it belongs to a batcher
or queue worker, whose own callers wait on it), so the model is not unloaded under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from time import perf_counter
from typing import TYPE_CHECKING, Any

from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelyardError
from modelyard.preprocess import wrap_user_error
from modelyard.preprocess_errors import UserErrors
from modelyard.serving import stacking
from modelyard.serving.inflight import VersionInflight

if TYPE_CHECKING:
    from modelyard.metrics import EndpointInstruments


class _Batch:
    """One batch's bookkeeping, shared by the async and sync paths: each item's data, its
    result or error, and its pre/postprocess seconds (what :meth:`ManyRuns._batch_stages` records)."""

    def __init__(self, bodies: list[Any]) -> None:
        self.n = len(bodies)
        self.results: list[Any] = [None] * self.n
        self.failed = [False] * self.n
        self.data: list[Any] = list(bodies)
        self.pre: list[float | None] = [None] * self.n
        self.post: list[float | None] = [None] * self.n

    def live(self) -> list[int]:
        """Positions of the items that have not failed yet."""
        return [i for i in range(self.n) if not self.failed[i]]

    def stage_sync(
        self,
        fn: Callable[..., Any],
        hook: str,
        values: list[Any],
        took: list[float | None],
        states: list[dict[str, Any]],
        collects: list[CollectFn],
        errors: UserErrors | None,
    ) -> None:
        """A sync pre/postprocess hook over the live items, in place in ``values``: an item whose
        hook raises fails alone; ``took`` gets each item's seconds."""
        for i in self.live():
            started = perf_counter()
            try:
                values[i] = fn(values[i], states[i], collects[i])
            except Exception as exc:
                self.results[i], self.failed[i] = _user_outcome(exc, hook, errors), True
            took[i] = perf_counter() - started

    def take(self, live: list[int], outputs: list[Any], *, into: list[Any]) -> None:
        """Engine outputs of the ``live`` items: an error fails its item, else it goes to ``into``."""
        for i, out in zip(live, outputs, strict=True):
            if isinstance(out, ModelyardError):
                self.results[i], self.failed[i] = out, True
            else:
                into[i] = out


class ManyRuns:
    """The batch path of :class:`~modelyard.serving.endpoint.LoadedEndpoint` (its base class)."""

    engine: Engine
    executor: Executor
    guard: VersionInflight
    instruments: EndpointInstruments | None
    _errors: UserErrors | None
    _pre: Callable[..., Any] | None
    _post: Callable[..., Any] | None
    _pre_async: bool
    _post_async: bool
    _all_sync: bool

    if TYPE_CHECKING:

        async def _stage(
            self,
            fn: Callable[..., Any],
            is_async: bool,
            name: str,
            data: Any,
            state: dict[str, Any],
            collect: CollectFn,
        ) -> Any: ...

        def _predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Awaitable[Any]: ...

        def _process_error(self, exc: Exception) -> ModelyardError: ...

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
        self.guard.enter(track=False)  # a batcher's or queue worker's task: never evicted
        if self.instruments is not None:
            self.instruments.batch_size.observe(len(bodies))
        try:
            if self._all_sync:
                return await self.guard.in_pool(self.executor, self._run_many_sync, bodies, states, collects)
            return await self._run_many_async(bodies, states, collects)
        finally:
            self.guard.leave(None)

    async def _run_batch(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        return await self.run_many(bodies, collects[0], states, collects)

    async def _run_many_async(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        """Async hooks or engine: stages per item concurrently, one stacked engine call."""
        b = _Batch(bodies)
        n, results, failed, data = b.n, b.results, b.failed, b.data

        async def stage(fn: Callable[..., Any], is_async: bool, name: str, i: int, took: list[Any]) -> None:
            started = perf_counter()
            try:
                data[i] = await self._stage(fn, is_async, name, data[i], states[i], collects[i])
            except ModelyardError as exc:
                results[i], failed[i] = exc, True
            took[i] = perf_counter() - started

        if self._pre is not None:
            await asyncio.gather(
                *(stage(self._pre, self._pre_async, "preprocess", i, b.pre) for i in range(n))
            )
        live = b.live()
        items = [data[i] for i in live]
        outputs: list[Any] = [None] * len(live)
        seconds = [0.0] * len(live)

        async def one(j: int, attempt: float) -> None:
            i = live[j]
            started = perf_counter()
            try:
                outputs[j] = await self._predict(items[j], states[i], collects[i])
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
                        await self._predict(stacked[0], states[first], collects[first]), stacked[1]
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
        b.take(live, outputs, into=data)
        if self._post is not None:
            await asyncio.gather(
                *(
                    stage(self._post, self._post_async, "postprocess", i, b.post)
                    for i in range(n)
                    if not failed[i]
                )
            )
        for i in range(n):
            if not failed[i]:
                results[i] = data[i]
        self._batch_stages(b, dict(zip(live, seconds, strict=True)))
        return results

    def _run_many_sync(
        self, bodies: list[Any], states: list[dict[str, Any]], collects: list[CollectFn]
    ) -> list[Any | ModelyardError]:
        b = _Batch(bodies)
        results, data = b.results, b.data
        if self._pre is not None:
            b.stage_sync(self._pre, "preprocess", data, b.pre, states, collects, self._errors)
        live = b.live()
        outputs, process = self._predict_stacked([data[i] for i in live], states, live, collects)
        b.take(live, outputs, into=results)
        if self._post is not None:
            b.stage_sync(self._post, "postprocess", results, b.post, states, collects, self._errors)
        self._batch_stages(b, dict(zip(live, process, strict=True)))
        return results

    def _batch_stages(self, b: _Batch, process: dict[int, float]) -> None:
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
        for i, bad in enumerate(b.failed):
            if not bad:
                inst.stages(None, b.pre[i], process[i], b.post[i])

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


def _user_outcome(exc: Exception, hook: str, errors: UserErrors | None) -> ModelyardError:
    return exc if isinstance(exc, ModelyardError) else wrap_user_error(exc, hook, errors)
