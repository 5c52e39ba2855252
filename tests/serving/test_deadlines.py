"""Deadlines, bounded retirement, unloading only after worker threads return, and the bounded
wait queue of versions whose calls take turns in the pool (issue 11, item 10)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config import EndpointConfig, ServiceConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.engines.registry import default_engine_registry
from modelyard.errors import DeadlineExceeded, ModelLoadError, Overloaded, Unavailable
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.fetch import ArtifactCache


class Sleeper(Engine):
    """Sleeps ``sleep_s`` in its worker thread (or awaits, ``wait="async"``); records when each
    call ended and when it was unloaded."""

    name: ClassVar[str] = "sleeper"
    batchable: ClassVar[bool] = True

    def load(self) -> None:
        self.ended: list[float] = []
        self.unloaded_at: float | None = None
        self.release = asyncio.Event()

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        time.sleep(float(self.config.options.get("sleep_s", 0)))
        self.ended.append(time.perf_counter())
        return data

    def unload(self) -> None:
        self.unloaded_at = time.perf_counter()


class AsyncSleeper(Sleeper):
    """An async engine that answers only when :attr:`release` is set (a hung remote call)."""

    name: ClassVar[str] = "async_sleeper"

    async def predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        await self.release.wait()
        return data


def config(name: str = "slow", **options: Any) -> EndpointConfig:
    return EndpointConfig(endpoint=name, version="1", engine="sleeper", options=options)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def loaded(
    pool: ThreadPoolExecutor,
    engine_type: type[Sleeper] = Sleeper,
    retire_wait_s: float = 60.0,
    **options: Any,
) -> tuple[LoadedEndpoint, Sleeper]:
    cfg = config(**{"inline_max_ms": 0, **options})
    engine = engine_type(cfg, None)
    engine.load()
    return LoadedEndpoint(cfg, engine, None, pool, retire_wait_s=retire_wait_s), engine


def _noop(values: dict[str, Any]) -> None:
    pass


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


# -- deadlines ---------------------------------------------------------------------------------------
def test_past_its_deadline_a_request_is_504_and_counted(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    async def test() -> None:
        async with httpx.AsyncClient() as http:
            dp = DataPlane(
                registry=default_engine_registry(),
                cache=ArtifactCache(tmp_path, http),
                executor=pool,
                nested_executor=pool,
                load_executor=pool,
                request_timeout_s=30,
            )
            engines: dict[str, Sleeper] = {}

            async def load(cfg: EndpointConfig) -> LoadedEndpoint:
                engine = engines[cfg.endpoint] = Sleeper(cfg, None)
                engine.load()
                return LoadedEndpoint(cfg, engine, None, pool, timeout_s=dp.request_timeout_s)

            dp.table.loader = load
            configs = [config("slow", sleep_s=1.0, timeout_s=0.2), config("quick", sleep_s=0.05)]
            dp.table.apply(ServiceConfig(service="s", revision=1, endpoints=configs))
            await dp.table.wait_loaded(5)
            started = time.perf_counter()
            with pytest.raises(
                DeadlineExceeded, match=r"'slow/1' did not answer within its deadline of 0.2 s"
            ):
                await dp.infer("slow", "1", [1])
            assert time.perf_counter() - started < 0.8, "answered at the deadline, not when predict ended"
            assert (await dp.infer("quick", "1", [2])).value == [2], "the setting's 30 s: in time"
            assert dp.admission.inflight == 0
            await dp.table.close()
            assert engines["slow"].unloaded_at is not None and engines["slow"].ended
            assert engines["slow"].unloaded_at >= engines["slow"].ended[0], "unloaded after its thread"
            body, _ = dp.metrics.exposition()
        codes = {
            (s.labels["endpoint"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "modelyard_requests_total"
        }
        assert codes[("slow", "504")] == 1
        assert codes[("quick", "200")] == 1

    run(test)


def test_the_deadline_cancels_async_engines_batches_and_waits_for_a_turn(pool: ThreadPoolExecutor) -> None:
    async def test() -> None:
        hung, engine = loaded(pool, AsyncSleeper, timeout_s=0.1)
        with pytest.raises(DeadlineExceeded):
            await hung.run([1], {}, _noop)
        assert hung.inflight == 0
        batched, _ = loaded(pool, sleep_s=0.5, timeout_s=0.1, max_batch_size=4, max_batch_delay_ms=0)
        with pytest.raises(DeadlineExceeded):
            await batched.run([1], {}, _noop)
        one_at_a_time, _ = loaded(pool, sleep_s=0.4, timeout_s=0.25, threads=1)
        first = asyncio.ensure_future(one_at_a_time.run([1], {}, _noop))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded):  # still waiting for the one thread when time is up
            await one_at_a_time.run([2], {}, _noop)
        assert time.perf_counter() - started < 0.35
        with pytest.raises(DeadlineExceeded):
            await first
        for endpoint in (hung, batched, one_at_a_time):
            await asyncio.wait_for(endpoint.retire(), 5)
        assert engine.unloaded_at is not None

    run(test)


def test_a_cancellation_from_elsewhere_stays_a_cancellation(pool: ThreadPoolExecutor) -> None:
    async def test() -> None:
        endpoint, _ = loaded(pool, sleep_s=0.3, timeout_s=10)
        task = asyncio.ensure_future(endpoint.run([1], {}, _noop))
        await asyncio.sleep(0.05)
        task.cancel()  # a gRPC client going away: not a deadline, not a 504
        with pytest.raises(asyncio.CancelledError):
            await task
        assert endpoint.inflight == 0 and endpoint.guard.threads == 1, "its thread still runs"
        await asyncio.wait_for(endpoint.retire(), 5)

    run(test)


def test_timeout_option_must_be_seconds(pool: ThreadPoolExecutor) -> None:
    for bad in ("soon", -1, "inf"):
        with pytest.raises(ModelLoadError, match="timeout_s"):
            loaded(pool, timeout_s=bad)
    assert loaded(pool, timeout_s="0")[0].timeout_s == 0
    assert loaded(pool)[0].timeout_s == 0, "no option, no default: no deadline"


# -- unloading only after the worker threads return ------------------------------------------------
@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_version_is_unloaded_only_after_a_given_up_predict_returns(
    pool: ThreadPoolExecutor, how: str
) -> None:
    async def test() -> None:
        endpoint, engine = loaded(pool, sleep_s=0.5, timeout_s=0.1 if how == "deadline" else 0)
        request = asyncio.ensure_future(endpoint.run([1], {}, _noop))
        await asyncio.sleep(0.05)  # predict runs in its thread now
        if how == "cancelled":
            request.cancel()
        with pytest.raises(asyncio.CancelledError if how == "cancelled" else DeadlineExceeded):
            await request
        assert not engine.ended, "the request gave up while predict still ran"
        await asyncio.wait_for(endpoint.retire(), 5)
        assert engine.ended and engine.unloaded_at is not None
        assert engine.unloaded_at >= engine.ended[0], "unloaded after the running predict ended"

    run(test)


def test_async_hooks_with_a_sync_engine_count_its_thread_too(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    from modelyard.preprocess import UserCode

    code = tmp_path / "hooks.py"
    code.write_text(
        "class Preprocess:\n    async def preprocess(self, body, state, collect=None):\n        return body\n"
    )
    cfg = config(sleep_s=0.4, timeout_s=0.1)

    async def test() -> None:
        engine = Sleeper(cfg, None)
        engine.load()
        endpoint = LoadedEndpoint(cfg, engine, UserCode.load(code, cfg), pool)
        with pytest.raises(DeadlineExceeded):
            await endpoint.run([1], {}, _noop)
        await asyncio.wait_for(endpoint.retire(), 5)
        assert engine.unloaded_at is not None and engine.unloaded_at >= engine.ended[0]

    run(test)


# -- retiring waits a bounded time ------------------------------------------------------------------
def test_retiring_waits_for_requests_at_most_retire_wait_s_then_cancels_them(
    pool: ThreadPoolExecutor,
) -> None:
    async def test() -> None:
        endpoint, engine = loaded(pool, AsyncSleeper, retire_wait_s=0.3)
        hung = [asyncio.ensure_future(endpoint.run([i], {}, _noop)) for i in range(3)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await asyncio.wait_for(endpoint.retire(), 5)
        assert 0.25 < time.perf_counter() - started < 2.0
        assert engine.unloaded_at is not None
        for request in hung:
            with pytest.raises(Unavailable, match="replaced or removed while this request ran") as info:
                await request
            assert info.value.retry_after == 1
        assert endpoint.inflight == 0
        with pytest.raises(Unavailable, match="being unloaded"):
            await endpoint.run([9], {}, _noop)

    run(test)


def test_requests_that_finish_in_time_are_not_cut(pool: ThreadPoolExecutor) -> None:
    async def test() -> None:
        endpoint, engine = loaded(pool, sleep_s=0.2, retire_wait_s=5)
        request = asyncio.ensure_future(endpoint.run([7], {}, _noop))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(endpoint.retire(), 5)
        assert await request == [7]
        assert engine.unloaded_at is not None and engine.unloaded_at >= engine.ended[0]

    run(test)


# -- the bounded wait queue of versions whose calls take turns -------------------------------------
@pytest.mark.parametrize("options", [{"threads": 1}, {}], ids=["threads option", "measured cpu-bound"])
def test_calls_taking_turns_wait_in_a_bounded_queue(
    pool: ThreadPoolExecutor, options: dict[str, Any]
) -> None:
    async def test() -> None:
        endpoint, _ = loaded(pool, sleep_s=0.3, max_queue=2, **options)
        if not options:  # make it measured CPU-bound, as a tree ensemble is after a few calls
            for _ in range(8):
                endpoint.placement.observe(0.01, 0.01)
            assert endpoint.placement.cpu_bound
        running = asyncio.ensure_future(endpoint.run(["running"], {}, _noop))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(endpoint.run([f"waits {i}"], {}, _noop)) for i in range(2)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(Overloaded, match=r"2 requests waiting .* \(max_queue 2\)") as info:
            await endpoint.run(["refused"], {}, _noop)
        assert time.perf_counter() - started < 0.1, "refused at once"
        assert info.value.retry_after == 1
        assert [await running, *[await w for w in waiting]] == [["running"], ["waits 0"], ["waits 1"]]
        assert await endpoint.run(["room again"], {}, _noop) == ["room again"]
        await endpoint.retire()

    run(test)


def test_a_swapped_out_version_drains_within_its_bound_and_shows_in_the_snapshot(
    pool: ThreadPoolExecutor,
) -> None:
    from modelyard.serving.table import EndpointTable

    async def test() -> None:
        engines: list[Sleeper] = []

        async def load(cfg: EndpointConfig) -> LoadedEndpoint:
            engine = AsyncSleeper(cfg, None) if cfg.options.get("hangs") else Sleeper(cfg, None)
            engine.load()
            engines.append(engine)
            return LoadedEndpoint(cfg, engine, None, pool, retire_wait_s=0.3)

        table = EndpointTable(loader=load)
        table.apply(ServiceConfig(service="s", revision=1, endpoints=[config("m", hangs=True)]))
        await table.wait_loaded(5)
        hung = asyncio.ensure_future(table.resolve("m", "1").run([1], {}, _noop))
        await asyncio.sleep(0.05)
        table.apply(ServiceConfig(service="s", revision=2, endpoints=[config("m", generation=2)]))
        await table.wait_loaded(5)
        assert table.snapshot()["draining"] == [{"key": "m/1", "inflight": 1, "threads": 0}]
        with pytest.raises(Unavailable, match="replaced or removed"):
            await asyncio.wait_for(hung, 5)
        for _ in range(100):
            if not table.snapshot()["draining"]:
                break
            await asyncio.sleep(0.02)
        assert table.snapshot()["draining"] == []
        assert engines[0].unloaded_at is not None
        assert await table.resolve("m", "1").run([2], {}, _noop) == [2], "the new version serves"
        await table.close()

    run(test)
