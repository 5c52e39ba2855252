"""GET /metrics on a real all-in-one server: standard metrics, custom statistics, bad rules refused."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.metrics import Metrics
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.monitoring.tools import samples, value
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

STATS_CODE = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if collect_custom_statistics_fn:
            collect_custom_statistics_fn({"score": body["x0"] * 10, "seen": None})
            collect_custom_statistics_fn({"score": "not a number"})   # dropped, not an error
            collect_custom_statistics_fn(["not", "a", "dict"])        # dropped too
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist(), "animal": "dog" if data.tolist()[0] else "cat"}
"""


class Server:
    def __init__(self, url: str, api: Api, tmp: Path) -> None:
        self.url, self.api, self.tmp = url, api, tmp

    def add(self, name: str, version: str, code: str = PREPROCESS_XY, **options: Any) -> None:
        path = self.tmp / f"{name}-{version}.pkl"
        train_sklearn(path)
        self.api.endpoint(
            endpoint=name,
            version=version,
            engine="sklearn",
            model_id=self.api.model(path, name),
            preprocess=self.api.code(code),
            options=options,
        )
        wait_for(lambda: self.infer(f"{name}/{version}").status_code == 200)

    def infer(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(f"{self.url}/serve/{path}", json=body or {"x0": 1, "x1": 2}, timeout=30)

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return samples(response.text)


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    settings = settings.model_copy(update={"sync_wait_s": 5, "stats_interval_s": 0.2})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        yield Server(url, Api(url, settings.token_file().read_text().strip()), tmp_path)


def test_standard_metrics_count_every_request_with_stages_and_states(server: Server) -> None:
    server.add("iris", "1")
    before = server.metrics()
    for _ in range(5):
        assert server.infer("iris/1").status_code == 200
    assert server.infer("iris/1", {"x0": "a"}).status_code == 422
    assert server.infer("nope").status_code == 404
    bad = httpx.post(f"{server.url}/serve/iris/1", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    m = server.metrics()
    ep = {"service": "default", "endpoint": "iris", "version": "1"}
    ok = value(m, "modelyard_requests_total", code="200", **ep) - value(
        before, "modelyard_requests_total", code="200", **ep
    )
    assert ok == 5
    assert value(m, "modelyard_requests_total", code="422", **ep) == 1
    assert value(m, "modelyard_requests_total", code="400", **ep) == 1  # refused before routing
    # (the wait for iris/1 to load may have met a 404 before the replica knew it: count from `before`)
    unrouted = {"code": "404", "endpoint": "_unknown", "version": ""}
    assert (
        value(m, "modelyard_requests_total", **unrouted)
        - value(before, "modelyard_requests_total", **unrouted)
        == 1
    )
    # cumulative histogram with +Inf, count equals the requests that ran
    count = value(m, "modelyard_request_duration_seconds_count", **ep)
    assert count == value(m, "modelyard_request_duration_seconds_bucket", le="+Inf", **ep) >= 6
    for stage in ("preprocess", "queue", "process", "postprocess"):
        assert value(m, "modelyard_stage_duration_seconds_count", stage=stage, **ep) >= 5, stage
    assert value(m, "modelyard_inflight_requests", **ep) == 0
    assert value(m, "modelyard_endpoint_state", state="ready", **ep) == 1
    assert value(m, "modelyard_endpoint_state", state="loading", **ep) == 0
    assert value(m, "modelyard_model_load_seconds_count", engine="sklearn", **ep) == 1
    assert value(m, "modelyard_config_revision", service="default") >= 2
    assert value(m, "process_resident_memory_bytes") > 0  # the client's default collectors


ASYNC_CODE = """
import asyncio

class Preprocess:
    async def preprocess(self, body, state, collect_custom_statistics_fn=None):
        await asyncio.sleep(0)
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist()}
"""


@pytest.mark.parametrize("code", [PREPROCESS_XY, ASYNC_CODE], ids=["sync_hooks", "async_preprocess"])
def test_batched_endpoint_records_every_stage_of_every_request(server: Server, code: str) -> None:
    server.add("iris", "1", code, max_batch_size=8, max_batch_delay_ms=20)
    before = server.metrics()
    n = 48
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda i: server.infer("iris/1", {"x0": i % 3, "x1": 1}).status_code, range(n)))
    assert codes == [200] * n
    m = server.metrics()
    ep = {"service": "default", "endpoint": "iris", "version": "1"}

    def delta(name: str, **labels: str) -> float:
        return value(m, name, **labels, **ep) - value(before, name, **labels, **ep)

    assert delta("modelyard_requests_total", code="200") == n
    batches = delta("modelyard_batch_size_count")
    assert delta("modelyard_batch_size_sum") == n and batches < n  # requests did share engine calls
    for stage in ("queue", "preprocess", "process", "postprocess"):  # one sample per request and stage
        assert delta("modelyard_stage_duration_seconds_count", stage=stage) == n, stage
        assert delta("modelyard_stage_duration_seconds_bucket", stage=stage, le="+Inf") == n, stage
    # a request's stages fit in its latency: the shared engine call is counted once per request
    stages = sum(
        delta("modelyard_stage_duration_seconds_sum", stage=s)
        for s in ("queue", "preprocess", "process", "postprocess")
    )
    assert 0 < stages <= delta("modelyard_request_duration_seconds_sum")
    assert delta("modelyard_stage_duration_seconds_sum", stage="queue") > 0


def test_load_failure_is_counted_and_state_failed(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"not a pickle")
    server.api.endpoint(
        endpoint="broken", version="1", engine="sklearn", model_id=server.api.model(broken, "broken")
    )
    wait_for(lambda: value(server.metrics(), "modelyard_endpoint_state", endpoint="broken", state="failed"))
    m = server.metrics()
    assert value(m, "modelyard_model_load_failures_total", endpoint="broken", engine="sklearn") == 1
    assert server.infer("broken/1").status_code == 503
    assert value(server.metrics(), "modelyard_requests_total", endpoint="broken", code="503") == 1


def test_custom_statistics_fields_and_user_code_and_wildcard_for_later_versions(server: Server) -> None:
    response = server.api.http.post(
        "/api/services/default/metrics",
        json={
            "endpoint": "iris/*",
            "log_freq": 1.0,
            "variables": [
                {"name": "x0", "kind": "scalar", "buckets": [0, 0.5, 1, 2]},
                {"name": "animal", "kind": "enum", "values": ["cat", "dog"]},
                {"name": "x1", "kind": "value"},
                {"name": "seen", "kind": "counter"},
                {"name": "score", "kind": "scalar", "buckets": [5, 10, 20]},
            ],
        },
    )
    assert response.status_code == 201, response.text
    server.add("iris", "7", STATS_CODE)  # created after the wildcard rule
    before = server.metrics()
    for x0 in (0.2, 1, 1, 3):
        assert server.infer("iris/7", {"x0": x0, "x1": 4}).status_code == 200
    m = server.metrics()
    ep = {"endpoint": "iris", "version": "7"}

    def delta(name: str, **labels: str) -> float:
        return value(m, name, **labels, **ep) - value(before, name, **labels, **ep)

    assert delta("modelyard_custom_x0_count") == 4
    assert delta("modelyard_custom_x0_bucket", le="0.5") == 1
    assert delta("modelyard_custom_x0_bucket", le="1.0") == 3
    assert delta("modelyard_custom_x0_bucket", le="+Inf") == 4
    assert value(m, "modelyard_custom_x1", **ep) == 4
    assert delta("modelyard_custom_animal_total") == 4
    assert delta("modelyard_custom_seen_total") == 4  # user code; value None counts 1
    assert delta("modelyard_custom_score_count") == 4  # user code's values
    assert delta("modelyard_custom_score_bucket", le="10.0") == 3
    errors = value(m, "modelyard_custom_statistics_errors_total")
    assert errors - value(before, "modelyard_custom_statistics_errors_total") == 8  # bad calls, dropped
    assert delta("modelyard_requests_total", code="200") == 4


def test_sampling_does_not_bias_request_counts(server: Server) -> None:
    server.api.http.post(
        "/api/services/default/metrics",
        json={"endpoint": "iris/1", "log_freq": 0.0, "variables": [{"name": "x0", "kind": "counter"}]},
    ).raise_for_status()
    server.add("iris", "1")
    for _ in range(20):
        server.infer("iris/1")
    m = server.metrics()
    assert value(m, "modelyard_requests_total", endpoint="iris", version="1", code="200") >= 20
    assert value(m, "modelyard_custom_x0_total", endpoint="iris") == 0  # none sampled


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"endpoint": "iris/1", "variables": [{"name": "x-0", "kind": "value"}]}, "not a valid Prometheus"),
        ({"endpoint": "iris/1", "variables": [{"name": "0x", "kind": "value"}]}, "not a valid Prometheus"),
        (
            {"endpoint": "iris/1", "variables": [{"name": "x", "kind": "scalar", "buckets": [0, 2, 1]}]},
            "strictly increasing",
        ),
        (
            {"endpoint": "iris/1", "variables": [{"name": "x", "kind": "scalar", "buckets": []}]},
            "needs buckets",
        ),
        ({"endpoint": "iris/1", "log_freq": 1.5, "variables": []}, "between 0 and 1"),
        ({"endpoint": "iris/1", "log_freq": -0.1, "variables": []}, "between 0 and 1"),
        ({"endpoint": "iris/1", "variables": [{"name": "y", "kind": "enum", "values": []}]}, "non-empty"),
        ({"endpoint": "ir is/1", "variables": []}, "not a valid name"),
    ],
)
def test_bad_rules_get_a_clear_4xx_and_nothing_is_stored(
    server: Server, rule: dict[str, Any], message: str
) -> None:
    revision = server.api.http.get("/api/services/default").json()["revision"]
    response = server.api.http.post("/api/services/default/metrics", json=rule)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["error"]
    assert server.api.http.get("/api/services/default/metrics").json() == []
    assert server.api.http.get("/api/services/default").json()["revision"] == revision


def test_rules_bump_revision_conflicting_shapes_refused_and_remove(server: Server) -> None:
    http = server.api.http
    revision = http.get("/api/services/default").json()["revision"]
    scalar = {"name": "x0", "kind": "scalar", "buckets": [0, 1]}
    assert (
        http.post(
            "/api/services/default/metrics", json={"endpoint": "a/1", "variables": [scalar]}
        ).status_code
        == 201
    )
    assert http.get("/api/services/default").json()["revision"] == revision + 1
    clash = {"endpoint": "b/*", "variables": [{"name": "x0", "kind": "value"}]}
    response = http.post("/api/services/default/metrics", json=clash)
    assert response.status_code == 409 and "already a scalar" in response.json()["error"]
    again = http.post(
        "/api/services/default/metrics", json={"endpoint": "a/1", "log_freq": 0.5, "variables": [scalar]}
    )
    assert again.status_code == 200
    config = http.get("/api/services/default/config").json()
    assert config["metrics"] == [
        {"endpoint": "a/1", "log_freq": 0.5, "variables": [{**scalar, "buckets": [0.0, 1.0], "values": []}]}
    ]
    assert http.delete("/api/services/default/metrics/a/1").status_code == 204
    assert http.delete("/api/services/default/metrics/a/1").status_code == 404
    assert http.get("/api/services/default/metrics").json() == []


def test_live_stats_give_rate_and_quantiles_without_prometheus(server: Server) -> None:
    server.add("iris", "1")

    def live() -> dict[str, Any] | None:
        for _ in range(10):
            server.infer("iris/1")
        stats = httpx.get(f"{server.url}/api/services/default/live").json()["endpoints"].get("iris/1")
        return stats if stats and stats["rate"] > 0 and stats["p50"] is not None else None

    stats = wait_for(live, timeout=10, interval=0.05)
    assert stats["p50"] <= stats["p99"] < 5
    assert not math.isnan(stats["rate"])
    assert re.match(r"^[0-9.]+$", str(stats["error_rate"]))


def test_standalone_replica_serves_metrics(settings: Settings) -> None:
    from modelyard.server import create_inference_app
    from tests.servers import run_control_plane

    with run_control_plane(settings) as control:
        replica_settings = settings.model_copy(update={"control_plane_url": control.url, "sync_wait_s": 2})
        with run_uvicorn_in_thread(create_inference_app(replica_settings)) as url:
            wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 200)
            m = samples(httpx.get(f"{url}/metrics").text)
            assert value(m, "modelyard_config_revision", service="default") >= 1
            assert httpx.post(f"{url}/serve/nothing", json={}).status_code == 404
            assert (
                value(samples(httpx.get(f"{url}/metrics").text), "modelyard_requests_total", code="404") == 1
            )


def nvml_devices() -> int | None:
    """How many GPUs NVML itself reports here, or None when NVML cannot start (no fake)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return None


def test_gpu_series_only_when_nvml_starts_and_the_reason_when_not(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    m = samples(response.text)
    gpu_series = [k for k in m if k.startswith("modelyard_gpu_") and "metrics_enabled" not in k]
    [(status, enabled)] = [(k, v) for k, v in m.items() if k.startswith("modelyard_gpu_metrics_enabled")]
    devices = nvml_devices()
    if devices:  # a GPU machine: one utilisation and two memory series per device
        assert status == 'modelyard_gpu_metrics_enabled{reason="enabled"}' and enabled == 1
        assert value(m, "modelyard_gpu_memory_total_bytes") > 0
        assert len(gpu_series) == 3 * devices, gpu_series
    else:  # no GPU here: /metrics works, no GPU series, and says why
        assert enabled == 0 and not gpu_series, gpu_series
        assert status in (
            'modelyard_gpu_metrics_enabled{reason="nvml_not_installed"}',
            'modelyard_gpu_metrics_enabled{reason="nvml_unavailable"}',
        ), status
        with caplog.at_level(logging.DEBUG, logger="modelyard.metrics"):
            probe = Metrics(service="x").gpu
        assert probe.collector is None and f"GPU metrics off: {probe.detail}" in caplog.text
        assert probe.reason in status
    assert value(m, "process_resident_memory_bytes") > 0


def test_control_plane_serves_its_own_metrics(settings: Settings) -> None:
    from tests.servers import run_control_plane

    with run_control_plane(settings) as control:
        api = Api(control.url, control.admin_token)
        api.http.post("/api/services", json={"name": "other"}).raise_for_status()
        for _ in range(3):
            assert api.http.get("/api/services/other").status_code == 200
        assert api.http.get("/api/services/missing").status_code == 404
        assert httpx.get(f"{control.url}/no/such/path").status_code == 404
        response = httpx.get(f"{control.url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        m = samples(response.text)
        requests = "modelyard_control_api_requests_total"
        assert value(m, requests, method="GET", route="/api/services/{name}", code="200") == 3
        assert value(m, requests, method="GET", route="/api/services/{name}", code="404") == 1
        assert value(m, requests, method="POST", route="/api/services", code="201") == 1
        assert value(m, requests, route="unmatched", code="404") == 1  # raw paths never become labels
        assert not [k for k in m if k.startswith(requests) and "missing" in k]
        assert (
            value(m, "modelyard_control_api_request_duration_seconds_count", route="/api/services/{name}")
            == 4
        )
        for service in ("default", "other"):
            revision = api.http.get(f"/api/services/{service}").json()["revision"]
            assert value(m, "modelyard_control_service_revision", service=service) == revision
            assert value(m, "modelyard_control_endpoints", service=service) == 0
        assert value(m, "process_resident_memory_bytes") > 0


def test_control_plane_metrics_follow_the_read_policy(settings: Settings) -> None:
    from tests.servers import run_control_plane

    with run_control_plane(settings.model_copy(update={"require_token_for_reads": True})) as control:
        assert httpx.get(f"{control.url}/metrics").status_code == 401
        response = httpx.get(
            f"{control.url}/metrics", headers={"authorization": f"Bearer {control.admin_token}"}
        )
        assert response.status_code == 200
        assert (
            value(
                samples(response.text), "modelyard_control_api_requests_total", route="/metrics", code="401"
            )
            == 1
        )
