"""Admission control in the data plane: a per-worker limit on requests in flight (issue 11)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import grpc
import httpx
import pytest

from modelyard.config import EndpointConfig, ServiceConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.engines.registry import default_engine_registry
from modelyard.errors import DeadlineExceeded, Overloaded
from modelyard.grpc_errors import code_for
from modelyard.http_errors import error_headers, status_for
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.fetch import ArtifactCache


class Waits(Engine):
    """Sleeps ``sleep_s`` in its thread; with option ``calls``, asks that endpoint first
    (a pipeline, through the data plane's blocking ``send_request``)."""

    name: ClassVar[str] = "waits"
    dataplane: ClassVar[DataPlane | None] = None

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        time.sleep(float(self.config.options.get("sleep_s", 0)))
        inner = self.config.options.get("calls")
        if inner:
            assert self.dataplane is not None
            return {"inner": self.dataplane.send_request(inner, "1", data)}
        return data


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def run_dataplane(
    tmp_path: Path,
    pool: ThreadPoolExecutor,
    limit: int,
    configs: list[EndpointConfig],
    test: Callable[[DataPlane], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as http:
            dp = DataPlane(
                registry=default_engine_registry(),
                cache=ArtifactCache(tmp_path, http),
                executor=pool,
                nested_executor=pool,
                load_executor=pool,
                max_inflight=limit,
            )
            dp.loop = asyncio.get_running_loop()
            Waits.dataplane = dp

            async def load(config: EndpointConfig) -> LoadedEndpoint:
                return LoadedEndpoint(config, Waits(config, None), None, pool)

            dp.table.loader = load
            dp.table.apply(ServiceConfig(service="s", revision=1, endpoints=configs))
            await dp.table.wait_loaded(5)
            await test(dp)
            await dp.table.close()

    asyncio.run(main())


def endpoint(name: str, **options: Any) -> EndpointConfig:
    return EndpointConfig(endpoint=name, version="1", engine="waits", options={"inline_max_ms": 0, **options})


def test_past_the_limit_a_request_is_refused_at_once(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    async def test(dp: DataPlane) -> None:
        admitted = [asyncio.ensure_future(dp.infer("slow", "1", [i])) for i in range(2)]
        await asyncio.sleep(0.05)
        assert dp.admission.inflight == 2
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="max_inflight 2") as info:
            await dp.infer("slow", "1", ["refused"])
        assert time.perf_counter() - started < 0.1
        assert status_for(info.value) == 503 and error_headers(info.value)["retry-after"] == "1"
        assert info.value.endpoint == "slow/1"
        assert [(await a).value for a in admitted] == [[0], [1]]
        assert dp.admission.snapshot() == {"inflight": 0, "max_inflight": 2, "shed": 1}
        assert (await dp.infer("slow", "1", ["room again"])).value == ["room again"]

    run_dataplane(tmp_path, pool, 2, [endpoint("slow", sleep_s=0.3)], test)


def test_a_pipelines_inner_calls_are_not_counted(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    async def test(dp: DataPlane) -> None:
        answer = await dp.infer("outer", "1", [5])
        assert answer.value == {"inner": [5]}, "the inner call was not refused half-way"
        assert dp.admission.shed == 0 and dp.admission.inflight == 0

    run_dataplane(tmp_path, pool, 1, [endpoint("outer", calls="inner"), endpoint("inner")], test)


def test_counting_returns_to_zero_after_cancellations_and_deadlines(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    async def test(dp: DataPlane) -> None:
        cancelled = asyncio.ensure_future(dp.infer("slow", "1", [1]))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises(DeadlineExceeded):
            await dp.infer("late", "1", [2])
        assert dp.admission.inflight == 0
        assert dp.table.ready["slow/1"].inflight == 0 and dp.table.ready["late/1"].inflight == 0

    run_dataplane(
        tmp_path,
        pool,
        4,
        [endpoint("slow", sleep_s=0.3), endpoint("late", sleep_s=0.3, timeout_s=0.05)],
        test,
    )


def test_deadline_and_overload_mean_the_same_on_both_transports() -> None:
    late = DeadlineExceeded("too late")
    assert status_for(late) == 504 and late.kind == "deadline_exceeded"
    assert code_for(late) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert code_for(Overloaded("full", retry_after=1)) == grpc.StatusCode.UNAVAILABLE
