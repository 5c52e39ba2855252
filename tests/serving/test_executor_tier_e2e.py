"""One batching executor behind a multi-worker front, as processes (docs/data-plane.md: one executor per GPU).

``modelyard serve --workers 2`` is the front; ``modelyard inference --service executor --workers 1``
holds the model with batching on; the front's ``triton`` endpoint forwards to it. Every answer
must be its own request's, every request of either front worker must reach the ONE batching
executor; with batching in the front too, each front batch must be ONE forwarded call whose
answer is split back per request. The executor going away must be a 503 at the front, not an
error or a hang. How
large the batches get under load is measured by ``bench/executor_tier.py``, not asserted here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
from bench.batching import mlp_onnx, oip_request
from bench.executor_tier import Tier, check_answers, mlp_reference, wait_until

from modelyard.metrics import FLUSH_INTERVAL_S
from tests.monitoring.tools import samples, value
from tests.servers import stop_process_group

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tmp = tmp_path_factory.mktemp("tier")
    (tmp / "home").mkdir()
    running = Tier(tmp / "home", workers=2)
    try:
        model_id = running.model(mlp_onnx(tmp / "mlp.onnx"), "onnx")
        batching = {"max_batch_size": 32, "max_batch_delay_ms": 20}
        running.endpoint("executor", "mlp", "onnx", batching, model_id)
        wait_until(
            lambda: httpx.get(f"{running.exec_url}/v2/models/mlp/ready").status_code == 200, 60, "executor"
        )
        forward = {"url": running.exec_url, "model_name": "mlp"}
        running.endpoint("default", "tiered", "triton", forward, None)
        running.endpoint("default", "tiered_batched", "triton", {**forward, **batching}, None)
        for name in ("tiered", "tiered_batched"):
            infer = f"{running.url}/v2/models/{name}/infer"
            # both front workers sync on their own: wait until fresh connections all find it
            wait_until(
                lambda infer=infer: all(
                    httpx.post(infer, content=b"{").status_code == 400 for _ in range(10)
                ),
                60,
                f"{name} on the front",
            )
        yield running
    finally:
        running.close()


def _answer(url: str, row: np.ndarray) -> np.ndarray:
    body, headers = oip_request("X", "FP32", row)
    response = httpx.post(url, content=body, headers=headers, timeout=30)  # a fresh connection: any worker
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    shape = orjson.loads(response.content[:length])["outputs"][0]["shape"]
    return np.frombuffer(response.content[length:], dtype=np.float32).reshape(shape)


def test_front_workers_share_one_batching_executor(tier: Tier) -> None:
    infer = f"{tier.url}/v2/models/tiered/infer"
    check_answers(infer, "X", rounds=10)
    replicas = {httpx.get(f"{tier.url}/status").json()["replica"] for _ in range(40)}
    assert len(replicas) == 2, replicas  # two front processes answer

    before = samples(httpx.get(f"{tier.exec_url}/metrics").text)
    rows = [np.random.default_rng(i).normal(size=(1, 64)).astype(np.float32) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda row: _answer(infer, row), rows))
    for row, out in zip(rows, answers, strict=True):
        np.testing.assert_allclose(out, mlp_reference(row), rtol=1e-4, atol=1e-4)
    after = samples(httpx.get(f"{tier.exec_url}/metrics").text)
    requests = value(after, "modelyard_batch_size_sum", endpoint="mlp") - value(
        before, "modelyard_batch_size_sum", endpoint="mlp"
    )
    # every request, from either front worker, went through the one executor's batcher
    assert requests == 48


def _batched(metrics: dict[str, float], endpoint: str) -> tuple[float, float]:
    """(requests, batches) the batch-size histogram of ``endpoint`` has seen."""
    return (
        value(metrics, "modelyard_batch_size_sum", endpoint=endpoint),
        value(metrics, "modelyard_batch_size_count", endpoint=endpoint),
    )


def test_front_batches_are_forwarded_whole_and_split_back_per_request(tier: Tier) -> None:
    """Batching at both tiers: each front batch is ONE forwarded call, answers still per request."""
    infer = f"{tier.url}/v2/models/tiered_batched/infer"
    time.sleep(3 * FLUSH_INTERVAL_S)  # the front workers' buffered metrics reach the shared files
    front_before = _batched(samples(httpx.get(f"{tier.url}/metrics").text), "tiered_batched")
    exec_before = _batched(samples(httpx.get(f"{tier.exec_url}/metrics").text), "mlp")
    rows = [np.random.default_rng(100 + i).normal(size=(1 + i % 3, 64)).astype(np.float32) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda row: _answer(infer, row), rows))
    for row, out in zip(rows, answers, strict=True):
        np.testing.assert_allclose(out, mlp_reference(row), rtol=1e-4, atol=1e-4)
    time.sleep(3 * FLUSH_INTERVAL_S)
    front_after = _batched(samples(httpx.get(f"{tier.url}/metrics").text), "tiered_batched")
    exec_after = _batched(samples(httpx.get(f"{tier.exec_url}/metrics").text), "mlp")
    front_requests, front_batches = (a - b for a, b in zip(front_after, front_before, strict=True))
    assert front_requests == 48
    # the executor got exactly one call per front batch, and no more calls than requests
    assert exec_after[0] - exec_before[0] == front_batches <= 48


def test_executor_gone_is_503_at_the_front(tier: Tier) -> None:
    stop_process_group(tier.procs[1], 20)
    body, headers = oip_request("X", "FP32", np.ones((1, 64), np.float32))
    for name in ("tiered", "tiered_batched"):
        for _ in range(4):  # both front workers
            response = httpx.post(
                f"{tier.url}/v2/models/{name}/infer", content=body, headers=headers, timeout=30
            )
            assert response.status_code == 503, response.text
            assert "remote OIP server" in response.json()["error"]
            assert response.headers["retry-after"] == "1"
