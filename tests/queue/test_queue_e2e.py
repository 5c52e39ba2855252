"""End to end: a real all-in-one server, real worker processes, real Redis; one worker SIGKILLed.

Every input has distinct values and the model (LinearRegression) gives each its own
answer, so a result written under the wrong uri, a lost input or a second different
answer would show.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from modelyard.queue import InputQueue, OutputQueue
from modelyard.queue.codec import encode_inputs
from tests.queue.stack import Stack, free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]

N = 10_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import REDIS_URL

    s = Stack(tmp_path_factory.mktemp("queue-e2e"), REDIS_URL)
    try:
        s.start_server()
        s.deploy("lin", "1")
        yield s
    finally:
        s.close()


def wait_until(fn: Callable[[], Any], timeout: float, what: str | Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what if isinstance(what, str) else what()}"
    )


def pending_of(rclient: redis.Redis, stream: str, consumer: str) -> int:
    return len(rclient.xpending_range(stream, "modelyard", "-", "+", 10_000, consumername=consumer))


def test_ten_thousand_inputs_three_workers_one_killed(
    stack: Stack, rclient: redis.Redis, stream: str
) -> None:
    args = ("--endpoint", "lin/1", "--batch-size", "128", "--claim-idle-ms", "1000", "--block-ms", "200")
    workers = [stack.start_worker(f"w{i}", stream, *args) for i in range(3)]
    try:
        run_ten_thousand(stack, rclient, stream, workers)
    finally:
        stack.stop_workers()


def run_ten_thousand(stack: Stack, rclient: redis.Redis, stream: str, workers: list[Any]) -> None:
    q = InputQueue(stack.redis_url, stream, endpoint="lin/1", max_pending=3000)
    out = OutputQueue(stack.redis_url, stream)
    assert q.predict(x=[0.0, 0.0, 0.0, 0.0], uri="warmup", timeout=60) is not None
    # every worker is consuming before the run starts
    wait_until(lambda: len(out.workers()) == 3, 60, "three workers")
    xs = np.random.default_rng(42).normal(size=(N, 4)) * 10 + np.arange(N)[:, None]
    uris = [f"in-{i}" for i in range(N)]
    killed_pending = 0
    started = time.monotonic()
    for start in range(0, N, 250):
        q.enqueue_batch([(uris[i], {"x": xs[i]}) for i in range(start, start + 250)])
        # kill w0 the moment it holds a batch it has not acknowledged
        if start >= N // 3 and workers[0].poll() is None and pending_of(rclient, stream, "w0-0"):
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            killed_pending = pending_of(rclient, stream, "w0-0")
    if workers[0].poll() is None:
        wait_until(lambda: pending_of(rclient, stream, "w0-0"), 30, "w0 to hold entries")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        killed_pending = pending_of(rclient, stream, "w0-0")
    assert workers[0].returncode == -signal.SIGKILL
    wait_until(
        lambda: out.count() >= N, 60, lambda: f"{N} results ({out.count()} so far; logs: {stack.root})"
    )
    elapsed = time.monotonic() - started
    # nothing is left behind: no backlog, nothing pending (w0's entries were claimed), no dead letters
    wait_until(lambda: rclient.xpending(stream, "modelyard")["pending"] == 0, 10, "no pending entries")
    assert rclient.xlen(stream) == 0
    assert out.dead_letters() == []
    assert workers[1].poll() is None and workers[2].poll() is None
    # every input got exactly its own answer
    expected = stack.model.predict(xs)  # type: ignore[union-attr]
    got = np.full(N, np.nan)
    by_worker: dict[str, int] = {}
    redelivered = 0
    for i, (uri, result) in enumerate(out.results(uris)):
        assert result is not None, f"{uri} has no result"
        assert result.ok and result.uri == uri and result.endpoint == "lin/1", result
        assert result.value["y"].shape == (1,)
        got[i] = result.value["y"][0]
        by_worker[(result.worker or "?").rsplit("-", 1)[0]] = (
            by_worker.get((result.worker or "?").rsplit("-", 1)[0], 0) + 1
        )
        redelivered += result.deliveries > 1
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    stats = out.stats()
    assert stats["results"] == N + 1  # one stored result per uri (incl. warm-up)
    duplicates = stats.get("duplicates", 0)
    assert redelivered >= min(killed_pending, 1)
    assert set(by_worker) <= {"w0", "w1", "w2"} and by_worker.get("w1") and by_worker.get("w2")
    print(
        f"\n{N} inputs in {elapsed:.2f} s ({N / elapsed:.0f}/s) by {by_worker}; w0 killed holding "
        f"{killed_pending} entries; {redelivered} answered after redelivery; {duplicates} duplicates"
    )


def test_bad_input_gets_clear_errors_and_code_changes_apply_live(
    stack: Stack, rclient: redis.Redis, stream: str
) -> None:
    stack.start_worker("solo", stream, "--endpoint", "lin/1", "--block-ms", "100")
    try:
        run_bad_input_and_reload(stack, rclient, stream)
    finally:
        stack.stop_workers()


def run_bad_input_and_reload(stack: Stack, rclient: redis.Redis, stream: str) -> None:
    q = InputQueue(stack.redis_url, stream, endpoint="lin/1")
    out = OutputQueue(stack.redis_url, stream)
    assert q.predict(x=[1.0, 2.0, 3.0, 4.0], timeout=60)["code"] == "v1"
    good = encode_inputs({"x": [1.0, 2.0, 3.0, 4.0]})
    rclient.xadd(stream, {"uri": "no-data", "endpoint": "lin/1"})
    rclient.xadd(stream, {"uri": "garbage", "data": b"\xff\xfe not a tensor", "endpoint": "lin/1"})
    rclient.xadd(stream, {"uri": "unknown", "data": good, "endpoint": "nope/3"})
    rclient.xadd(stream, {"uri": "shape", "data": encode_inputs({"x": [1.0, 2.0, 3.0]}), "endpoint": "lin/1"})
    rclient.xadd(stream, {"uri": "no-x", "data": encode_inputs({"z": [1.0]}), "endpoint": "lin/1"})
    rclient.xadd(stream, {"uri": "after", "data": good, "endpoint": "lin/1"})
    after = out.wait("after", timeout=30)
    assert after.ok and after.value["y"].shape == (1,)
    expected = {
        "no-data": ("bad_request", "no 'data' field"),
        "garbage": ("bad_request", "neither MYQ1"),
        "unknown": ("not_found", "endpoint 'nope/3' not found"),
        "shape": ("invalid_input", "3 features"),
        "no-x": ("unprocessable", "KeyError"),
    }
    for uri, (kind, text) in expected.items():
        result = out.wait(uri, timeout=10)
        assert not result.ok and result.kind == kind and text in (result.error or ""), (uri, result)
    # a new preprocess version is picked up by the running worker, no restart
    stack.set_code("lin", "1", "v2")
    wait_until(lambda: q.predict(x=[1.0, 2.0, 3.0, 4.0], timeout=30)["code"] == "v2", 30, "code v2")
    assert stack.workers[-1].poll() is None


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` of a worker: (sample name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), float("nan"))


def test_worker_metrics_endpoint(stack: Stack, rclient: redis.Redis, stream: str) -> None:
    """A real worker's --metrics-port: queue counters and gauges, and the data plane's own series."""
    port = free_port()
    # an entry read by a consumer that died: the worker claims it and, past --max-failures 1,
    # dead-letters it
    rclient.xgroup_create(stream, "modelyard", id="0", mkstream=True)
    rclient.xadd(stream, {"uri": "poison", "data": encode_inputs({"x": [1.0] * 4}), "endpoint": "lin/1"})
    rclient.xreadgroup("modelyard", "ghost", {stream: ">"}, count=1)
    stack.start_worker(
        "metrics", stream, "--endpoint", "lin/1", "--metrics-port", str(port), "--keep-acked",
        "--max-failures", "1", "--claim-idle-ms", "300", "--block-ms", "100",
    )  # fmt: skip
    try:
        wait_until(lambda: _scrapes(port), 60, lambda: f"/metrics on {port} ({stack.worker_log('metrics')})")
        run_metrics(stack, rclient, stream, port)
    finally:
        stack.stop_workers()


def _scrapes(port: int) -> bool:
    try:
        return "modelyard_queue" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except httpx.HTTPError:
        return False


def run_metrics(stack: Stack, rclient: redis.Redis, stream: str, port: int) -> None:
    n, bad = 40, 3
    q = InputQueue(stack.redis_url, stream, endpoint="lin/1")
    out = OutputQueue(stack.redis_url, stream)
    q.enqueue_batch([(f"ok{i}", {"x": [float(i), 1.0, 2.0, 3.0]}) for i in range(n)])
    q.enqueue_batch([(f"bad{i}", {"x": [1.0, 2.0, 3.0]}) for i in range(bad)])  # 3 features, not 4
    q.enqueue_batch([("nowhere", {"x": [1.0] * 4})], endpoint="nope/1")
    for i in range(n):
        assert out.wait(f"ok{i}", timeout=60).ok
    for i in range(bad):
        assert out.wait(f"bad{i}", timeout=10).kind == "invalid_input"
    assert out.wait("nowhere", timeout=10).kind == "not_found"
    assert out.wait("poison", timeout=30).dead_lettered
    total = n + bad + 2  # every entry, the dead-lettered one included
    labels = {"stream": stream}
    group = {"stream": stream, "group": "modelyard"}

    def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        """The gauges (refreshed every 2 s) once they saw the end of the run.

        --keep-acked: the stream keeps every entry, yet nothing is waiting (lag) or in flight
        (pending); a lag computed from the stream's length would never reach 0.
        """
        s = scrape(port)
        gauges = (
            sample(s, "modelyard_queue_stream_length", **labels),
            sample(s, "modelyard_queue_lag", **group),
            sample(s, "modelyard_queue_pending", **group),
            sample(s, "modelyard_queue_dead_letter_length", **labels),
        )
        return s if gauges == (total, 0, 0, 1) else None

    s = wait_until(settled, 15, lambda: f"length {total}, lag 0, pending 0, 1 dead in {scrape(port)}")
    assert sample(s, "modelyard_queue_processed_total", stream=stream, endpoint="lin/1") == n
    assert sample(s, "modelyard_queue_failed_total", stream=stream, kind="invalid_input") == bad
    assert sample(s, "modelyard_queue_failed_total", stream=stream, kind="not_found") == 1
    assert sample(s, "modelyard_queue_dead_lettered_total", **labels) == 1
    assert sample(s, "modelyard_queue_reclaimed_total", **labels) == 1
    assert sample(s, "modelyard_queue_batch_size_sum", **labels) == total
    batches = sample(s, "modelyard_queue_batch_size_count", **labels)
    assert 2 <= batches <= total  # the claimed entry is a batch of its own
    assert sample(s, "modelyard_queue_batch_size_bucket", stream=stream, le="+Inf") == batches
    assert sample(s, "modelyard_queue_latency_seconds_count", **labels) == total - 1  # poison has no t
    assert 0 < sample(s, "modelyard_queue_latency_seconds_sum", **labels) < 60 * (total - 1)
    # the data plane's per-endpoint series, as an HTTP replica's /metrics has them
    endpoint = {"service": "default", "endpoint": "lin", "version": "1"}
    assert sample(s, "modelyard_requests_total", **endpoint, code="200") == n
    failed = sum(v for (name, lbl), v in s.items() if name == "modelyard_requests_total"
                 and dict(lbl).get("endpoint") == "lin" and dict(lbl)["code"] != "200")  # fmt: skip
    assert failed == bad
    assert sample(s, "modelyard_request_duration_seconds_count", **endpoint) == n + bad
    assert sample(s, "modelyard_endpoint_state", **endpoint, state="ready") == 1
    assert sample(s, "modelyard_batch_size_sum", **endpoint) == n + bad


def test_root_cli_url_and_token_reach_the_worker(
    stack: Stack, rclient: redis.Redis, stream: str, tmp_path: Path
) -> None:
    """``modelyard --url U --token T queue-worker``: the root options beat the environment.

    The worker's home has no token file and the environment names a closed port and a wrong
    token, so it can fetch the model (artifact downloads need a token) only with both root
    options.
    """
    token = (stack.home / "token").read_text().strip()
    env = stack.env()
    env.update(
        MODELYARD_HOME=str(tmp_path / "empty-home"),
        MODELYARD_URL=f"http://127.0.0.1:{free_port()}",
        MODELYARD_TOKEN="not-a-token",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "from modelyard.cli.main import main; main()",
         "--url", stack.url, "--token", token, "queue-worker", "--service", "default",
         "--stream", stream, "--endpoint", "lin/1", "--block-ms", "100", "--consumer", "rootcli"],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        q = InputQueue(stack.redis_url, stream, endpoint="lin/1")
        try:
            answer = q.predict(x=[1.0, 2.0, 3.0, 4.0], timeout=60)
        except TimeoutError:
            raise AssertionError((tmp_path / "worker.log").read_text(errors="replace")) from None
        expected = stack.model.predict(np.array([[1.0, 2.0, 3.0, 4.0]]))  # type: ignore[union-attr]
        np.testing.assert_allclose(answer["y"], expected)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text(errors="replace")
