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
from modelyard.serving.inline import MAX_STREAK, InlinePolicy, inline_limit_s, pool_threads

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
        heavy.observe(0.003, 0.003)
    assert not heavy.inline


def test_a_chain_a_little_over_the_limit_in_the_pool_is_tried_on_the_loop_and_judged_there() -> None:
    # a pool thread costs more CPU than the loop for the same chain (cold caches, another core)
    cheap_on_loop = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        cheap_on_loop.observe(0.0015, 0.0015)
    assert cheap_on_loop.inline, "tried"
    for _ in range(10):
        cheap_on_loop.observe(0.0002, 0.0002)
    assert cheap_on_loop.inline and cheap_on_loop.streak == 4, "kept: cheap where it runs"
    dear_on_loop = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        dear_on_loop.observe(0.0015, 0.0015)
    for _ in range(3):
        dear_on_loop.observe(0.0009, 0.0009)
        assert dear_on_loop.inline, "judged on a few calls, not one"
    dear_on_loop.observe(0.0009, 0.0009)
    assert not dear_on_loop.inline and dear_on_loop.streak == 8


def test_inline_blocking_sends_it_back_but_pre_emption_does_not() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        policy.observe(0.0001, 0.0001)
    assert policy.inline
    for _ in range(20):
        policy.observe(0.02, 0.0001, switches=0)  # pre-empted by the OS: involuntary, not ours
    assert policy.inline
    policy.observe(0.0015, 0.0001, switches=1)  # switched out briefly (a GIL hand-over): fine
    assert policy.inline
    policy.observe(0.02, 0.0001, switches=1)  # waited 20 ms on I/O while holding the loop
    assert not policy.inline and policy.streak == 8


def test_inline_a_rising_cpu_average_sends_it_back() -> None:
    policy = InlinePolicy(LIMIT, streak=4)
    for _ in range(4):
        policy.observe(0.0001, 0.0001)
    for _ in range(30):
        policy.observe(0.001, 0.001)  # the model got slower: 1 ms of CPU a call
        if not policy.inline:
            break
    assert not policy.inline


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


def test_the_threads_option_is_a_whole_number_or_unset() -> None:
    assert pool_threads({}, calls_endpoints=False) is None
    assert pool_threads({}, calls_endpoints=True) is None
    assert pool_threads({"threads": 8}, calls_endpoints=True) == 8
    assert pool_threads({"threads": "3"}, calls_endpoints=False) == 3
    for bad in (0, 1.5, "many", -2):
        with pytest.raises(ModelLoadError, match="option threads="):
            pool_threads({"threads": bad}, calls_endpoints=False)


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
    running: ClassVar[dict[str, int]] = {}
    most: ClassVar[dict[str, int]] = {}

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        key = self.config.key
        ThreadEngine.running[key] = ThreadEngine.running.get(key, 0) + 1
        ThreadEngine.most[key] = max(ThreadEngine.most.get(key, 0), ThreadEngine.running[key])
        try:
            return self._predict(data)
        finally:
            ThreadEngine.running[key] -= 1

    def _predict(self, data: Any) -> Any:
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
        assert tries == [35], "3 warm-up + 32 measured in the pool; the first call on the loop blocked"
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


def test_cpu_bound_chains_run_one_at_a_time_waiting_ones_do_not_unless_told(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    async def test(dp: DataPlane) -> None:
        for name in ("busy", "waits", "two"):
            # warm-up and measure, one at a time; enough calls for the moving average to forget a
            # cold first call (a fresh checkout compiles and imports on it: milliseconds of CPU)
            for _ in range(40):
                await dp.infer(name, "1", {})
        ThreadEngine.most.clear()
        for name in ("busy", "waits", "two"):
            answers = await asyncio.gather(*(dp.infer(name, "1", {}) for _ in range(12)))
            assert len(answers) == 12
        assert ThreadEngine.most == {"busy/1": 1, "waits/1": 4, "two/1": 2}
        assert dp.table.ready["busy/1"].placement.cpu_bound
        assert not dp.table.ready["waits/1"].placement.cpu_bound

    configs = [
        endpoint("busy", busy_s=0.003, inline_max_ms=0),  # computes: threads would only contend
        endpoint("waits", sleep_s=0.02, inline_max_ms=0),  # waits (I/O): as many as the pool has
        endpoint("two", busy_s=0.003, threads=2, inline_max_ms=0),  # told
    ]
    run_dataplane(tmp_path, pool, configs, test)
