"""The dynamic batcher on a loaded endpoint: answers match requests, failures stay alone, bounded queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pytest

from modelyard.config import EndpointConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelLoadError, ModelyardError, Overloaded, Unprocessable
from modelyard.metrics import Metrics
from modelyard.serving.endpoint import LoadedEndpoint


class RowEngine(Engine):
    """Doubles its input; refuses negative numbers; remembers the batch size of each call."""

    name: ClassVar[str] = "rows"
    batchable: ClassVar[bool] = True
    delay_s = 0.005

    def load(self) -> None:
        self.calls: list[int] = []
        self.unloaded_at: float | None = None

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        if isinstance(data, dict):
            self.calls.append(len(data["a"]))
            time.sleep(self.delay_s)
            return {"sum": data["a"] + data["b"], "a_twice": [data["a"] * 2]}
        x = np.asarray(data)
        self.calls.append(len(x))
        time.sleep(self.delay_s)
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2

    def unload(self) -> None:
        self.unloaded_at = time.perf_counter()


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waits: list[float] = []
        self.refused = 0

    def batch(self, key: str, size: int, queue_wait_s: Sequence[float]) -> None:
        self.sizes.append(size)
        self.waits.extend(queue_wait_s)

    def overloaded(self, key: str) -> None:
        self.refused += 1


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def endpoint(
    pool: ThreadPoolExecutor, observer: Any = None, **options: Any
) -> tuple[LoadedEndpoint, RowEngine]:
    config = EndpointConfig(endpoint="rows", version="1", engine="rows", options=options)
    engine = RowEngine(config, None)
    engine.load()
    return LoadedEndpoint(config, engine, None, pool, observer), engine


def _noop(values: dict[str, Any]) -> None:
    pass


async def _run(loaded: LoadedEndpoint, body: Any) -> Any:
    return await loaded.run(body, {}, _noop)


def test_concurrent_requests_get_their_own_answers_in_few_calls(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    loaded, engine = endpoint(pool, recorder, max_batch_size=8, max_batch_delay_ms=20)
    bodies = [np.array([[i, i + 0.5]] * (1 + i % 3)) for i in range(40)]

    async def main() -> list[Any]:
        return await asyncio.gather(*(_run(loaded, b) for b in bodies))

    results = asyncio.run(main())
    for body, result in zip(bodies, results, strict=True):
        np.testing.assert_array_equal(result, body * 2)
    assert max(recorder.sizes) > 1 and max(recorder.sizes) <= 8
    assert sum(recorder.sizes) == 40 and len(engine.calls) < 40
    assert len(recorder.waits) == 40 and all(w >= 0 for w in recorder.waits)


def test_a_failing_request_fails_alone(pool: ThreadPoolExecutor) -> None:
    loaded, engine = endpoint(pool, max_batch_size=16, max_batch_delay_ms=30)
    bodies: list[Any] = [[[float(i), 1.0]] for i in range(12)]
    bodies[5] = [[-1.0, 1.0]]
    bodies[9] = "not numbers"

    async def main() -> list[Any]:
        return await asyncio.gather(*(_run(loaded, b) for b in bodies), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[5], Unprocessable) and "negative input" in results[5].message
    assert isinstance(results[9], ModelyardError)
    for i, result in enumerate(results):
        if i not in (5, 9):
            np.testing.assert_array_equal(result, np.array(bodies[i]) * 2)
    assert engine.calls[0] > 1  # they did run as one batch first


def test_dict_inputs_stack_per_name_and_dict_outputs_split(pool: ThreadPoolExecutor) -> None:
    loaded, engine = endpoint(pool, max_batch_size=8, max_batch_delay_ms=30)
    bodies = [
        {"a": np.full((1 + i % 2, 3), i, np.float32), "b": np.ones((1 + i % 2, 3), np.float32)}
        for i in range(6)
    ]

    async def main() -> list[Any]:
        return await asyncio.gather(*(_run(loaded, b) for b in bodies))

    results = asyncio.run(main())
    for body, result in zip(bodies, results, strict=True):
        np.testing.assert_array_equal(result["sum"], body["a"] + body["b"])
        np.testing.assert_array_equal(result["a_twice"][0], body["a"] * 2)
    assert engine.calls[0] == sum(len(b["a"]) for b in bodies)


def test_full_queue_is_refused_with_retry_after(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    loaded, engine = endpoint(pool, recorder, max_batch_size=2, max_batch_delay_ms=0, max_queue=2)
    engine.delay_s = 0.2

    async def main() -> list[Any]:
        return await asyncio.gather(*(_run(loaded, [[i, 0]]) for i in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert refused and all(r.retry_after and r.retry_after >= 1 for r in refused)
    assert recorder.refused == len(refused)
    served = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert served and all(np.array_equal(r, [[2 * i, 0]]) for i, r in served)


def test_retire_waits_for_queued_requests(pool: ThreadPoolExecutor) -> None:
    loaded, engine = endpoint(pool, max_batch_size=4, max_batch_delay_ms=0)
    engine.delay_s = 0.05
    finished: list[float] = []

    async def one(i: int) -> Any:
        result = await _run(loaded, [[i, 1]])
        finished.append(time.perf_counter())
        return result

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(one(i)) for i in range(20)]
        await asyncio.sleep(0.01)  # all queued, the first batch running
        await loaded.retire()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[[2 * i, 2]] for i in range(20)]
    assert engine.unloaded_at is not None and engine.unloaded_at >= max(finished)
    assert loaded.batcher is not None and loaded.batcher.queued == 0


def test_bad_batching_options_fail_the_load(pool: ThreadPoolExecutor) -> None:
    for options in ({"max_batch_size": "many"}, {"max_batch_size": 0}, {"max_batch_size": 2.5}):
        with pytest.raises(ModelLoadError, match="max_batch_size"):
            endpoint(pool, **options)
    loaded, _ = endpoint(pool, max_batch_size="1")
    assert loaded.batcher is None


def _stage_samples(metrics: Metrics) -> dict[tuple[str, str], float]:
    """``{(sample name, stage): value}`` of the stage histogram (``le`` buckets summed away)."""
    out: dict[tuple[str, str], float] = {}
    for sample in metrics.own_samples("modelyard_stage_duration_seconds"):
        if sample.name.endswith(("_count", "_sum")):
            key = (sample.name.rsplit("_", 1)[1], sample.labels["stage"])
            out[key] = out.get(key, 0.0) + sample.value
    return out


def test_batched_requests_record_their_stages_and_the_shared_engine_time(pool: ThreadPoolExecutor) -> None:
    metrics = Metrics(gpu=False)
    loaded, engine = endpoint(pool, metrics.batch_observer(), max_batch_size=8, max_batch_delay_ms=50)
    loaded.instruments = metrics.endpoint("rows", "1")
    engine.delay_s = 0.02
    good: list[Any] = [[[float(i), 1.0]] for i in range(8)]
    bad = list(good)
    bad[3] = [[-1.0, 1.0]]  # the stacked call fails, then each runs alone
    seen: list[dict[tuple[str, str], float]] = []

    async def main() -> list[Any]:  # one event loop: the batcher's workers live on it
        await asyncio.gather(*(_run(loaded, b) for b in good))
        seen.append(_stage_samples(metrics))
        return await asyncio.gather(*(_run(loaded, b) for b in bad), return_exceptions=True)

    results = asyncio.run(main())
    stages = seen[0]
    assert engine.calls[0] == 8  # one stacked call of 0.02 s ...
    assert stages[("count", "process")] == 8 and stages[("count", "queue")] == 8
    assert 8 * 0.02 <= stages[("sum", "process")] < 8 * 0.02 * 5  # ... is each request's process time
    assert stages.get(("count", "preprocess"), 0) == 0  # no user code: no such stage

    assert isinstance(results[3], Unprocessable)
    assert engine.calls[1:] == [8, 1, 1, 1, 1, 1, 1, 1, 1]
    after = _stage_samples(metrics)
    assert after[("count", "queue")] == 16  # every request waited in the queue
    assert after[("count", "process")] == 8 + 7  # the failed one records no stages, as unbatched
    # each answered request spent the failed stacked call plus its own call in the engine
    assert after[("sum", "process")] - stages[("sum", "process")] >= 7 * 2 * 0.02
