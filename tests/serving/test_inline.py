"""Where a synchronous chain runs: the measured policy, and the data plane following it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from modelyard.config import EndpointConfig, ServiceConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.engines.registry import default_engine_registry
from modelyard.errors import ModelLoadError
from modelyard.preprocess import UserCode
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.fetch import ArtifactCache
from modelyard.serving.inline import MAX_STREAK, InlinePolicy, inline_limit_s

LIMIT = 0.5e-3


def test_the_policy_starts_in_the_pool_and_moves_inline_after_a_fast_streak() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(3):
        policy.observe(0.0001, 0.0001)
        assert not policy.inline
    policy.observe(0.0001, 0.0001)
    assert policy.inline


def test_in_the_pool_cpu_time_counts_not_the_wait_for_the_gil() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        policy.observe(0.004, 0.0001)  # long wall times behind a busy event loop
    assert policy.inline
    heavy = InlinePolicy(LIMIT, streak=4)
    for _ in range(40):
        heavy.observe(0.002, 0.002)
    assert not heavy.inline


def test_inline_a_rising_wall_time_sends_it_back_and_doubles_the_streak() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        policy.observe(0.0001, 0.0001)
    assert policy.inline
    policy.observe(0.002, 0.0001)  # pre-empted once: the average moves, not the decision
    assert policy.inline
    for _ in range(3):
        policy.observe(0.02, 0.0001)  # waits on I/O while holding the loop
        if not policy.inline:
            break
    assert not policy.inline and policy.streak == 8


def test_a_real_stall_sends_it_back_at_once() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        policy.observe(0.0001, 0.0001)
    policy.observe(0.05, 0.05)  # computed 100x the limit on the event loop
    assert not policy.inline and policy.streak == 8
    for _ in range(7):
        policy.observe(0.0001, 0.0001)
    assert not policy.inline
    policy.observe(0.0001, 0.0001)
    assert policy.inline
    for _ in range(30):
        policy.inline = True
        policy.observe(1.0, 1.0)
    assert policy.streak == MAX_STREAK


def test_a_zero_limit_and_pinning_keep_it_in_the_pool() -> None:
    off = InlinePolicy(0.0, streak=1)
    for _ in range(10):
        off.observe(0.00001, 0.00001)
    assert not off.inline
    pinned = InlinePolicy(LIMIT, streak=1)
    pinned.observe(0.0001, 0.0001)
    assert pinned.inline
    pinned.pin_to_pool()
    pinned.observe(0.0001, 0.0001)
    assert not pinned.inline


def test_the_endpoint_option_overrides_the_default_and_bad_values_fail_the_load() -> None:
    assert inline_limit_s({}, 0.0005) == 0.0005
    assert inline_limit_s({"inline_max_ms": 2}, 0.0005) == 0.002
    assert inline_limit_s({"inline_max_ms": "0"}, 0.0005) == 0.0
    with pytest.raises(ModelLoadError, match=r"option inline_max_ms='fast' is not a number"):
        inline_limit_s({"inline_max_ms": "fast"}, 0.0005)
    with pytest.raises(ModelLoadError, match="must be at least 0"):
        inline_limit_s({"inline_max_ms": -1}, 0.0005)


# -- the data plane following the policy -----------------------------------------------------


class ThreadEngine(Engine):
    """Answers with the name of the thread it ran on, after ``options.sleep_s``/``busy_s``."""

    name: ClassVar[str] = "thread"
    needs_model: ClassVar[bool] = False
    dataplane: ClassVar[DataPlane | None] = None

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        time.sleep(float(self.config.options.get("sleep_s", 0)))  # waits, like I/O
        end = time.thread_time() + float(self.config.options.get("busy_s", 0))
        while time.thread_time() < end:  # computes
            pass
        if self.config.options.get("calls"):  # a pipeline hidden from the source scan
            assert self.dataplane is not None
            inner = getattr(self.dataplane, "send_" + "request")(self.config.options["calls"], None, data)
            return {"outer": threading.current_thread().name, "inner": inner}
        return threading.current_thread().name


def endpoint(name: str, **options: Any) -> EndpointConfig:
    return EndpointConfig(endpoint=name, version="1", engine="thread", options=options)


@pytest.fixture
def pool() -> Any:
    executor = ThreadPoolExecutor(4, thread_name_prefix="pool")
    yield executor
    executor.shutdown()


def run_dataplane(tmp_path: Path, pool: ThreadPoolExecutor, configs: list[EndpointConfig], test: Any) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as http:
            dp = DataPlane(
                registry=default_engine_registry(),
                cache=ArtifactCache(tmp_path, http),
                executor=pool,
                nested_executor=pool,
                load_executor=pool,
                inline_max_s=LIMIT,
            )
            dp.loop = asyncio.get_running_loop()
            ThreadEngine.dataplane = dp

            async def load(config: EndpointConfig) -> LoadedEndpoint:
                return LoadedEndpoint(config, ThreadEngine(config, None), None, pool, inline_max_s=LIMIT)

            dp.table.loader = load
            dp.table.apply(ServiceConfig(service="s", revision=1, endpoints=configs))
            await dp.table.wait_loaded(5)
            await test(dp)
            await dp.table.close()

    asyncio.run(main())


def test_fast_chains_move_onto_the_event_loop_slow_ones_stay_in_the_pool(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    async def test(dp: DataPlane) -> None:
        loop_thread = threading.current_thread().name
        fast = [(await dp.infer("fast", "1", {})).value for _ in range(60)]
        assert set(fast[:32]) <= {f"pool_{i}" for i in range(4)}, "starts in the pool"
        assert fast[-1] == loop_thread, "runs inline once measured fast"
        busy = [(await dp.infer("busy", "1", {})).value for _ in range(40)]
        assert loop_thread not in busy, "computes over the limit: never on the loop"
        # waits (like I/O) with little CPU: each try inline sends it back for twice as long
        waits = [(await dp.infer("waits", "1", {})).value for _ in range(90)]
        tries = [i for i, t in enumerate(waits) if t == loop_thread]
        assert tries == [32, 33, 34], "three waits of 10 ms lift the average over 0.5 ms"
        placement = dp.table.ready["waits/1"].placement
        assert not placement.inline and placement.streak == 64

    configs = [endpoint("fast"), endpoint("busy", busy_s=0.002), endpoint("waits", sleep_s=0.01)]
    run_dataplane(tmp_path, pool, configs, test)


def test_a_chain_that_waits_on_the_loop_is_moved_back_to_the_pool_and_answers(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    async def test(dp: DataPlane) -> None:
        answers = [(await asyncio.wait_for(dp.infer("outer", "1", {}), 5)).value for _ in range(80)]
        assert all(a["inner"].startswith(("pool_", "MainThread")) for a in answers)
        placement = dp.table.ready["outer/1"].placement
        assert placement.limit_s == 0.0 and not placement.inline, "pinned to the pool"
        assert answers[-1]["outer"].startswith("pool_")

    run_dataplane(
        tmp_path, pool, [endpoint("outer", calls="inner", inline_max_ms=50), endpoint("inner")], test
    )


def test_user_code_that_mentions_send_request_never_runs_inline(tmp_path: Path) -> None:
    code = tmp_path / "pipe.py"
    code.write_text(
        "class Preprocess:\n"
        "    def process(self, data, state, collect=None):\n"
        "        return self.send_request('other', data=data) if data.get('fan') else data\n"
    )
    plain = tmp_path / "plain.py"
    plain.write_text(
        "class Preprocess:\n    def process(self, data, state, collect=None):\n        return data\n"
    )
    config = EndpointConfig(endpoint="p", version="1", engine="custom")
    assert UserCode.load(code, config).calls_endpoints
    assert not UserCode.load(plain, config).calls_endpoints
