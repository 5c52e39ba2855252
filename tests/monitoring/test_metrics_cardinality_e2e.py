"""Requests for things the service does not have add no series: a real all-in-one server flooded
with random endpoint names and versions over /serve, /v2, /v1 and gRPC keeps ``/metrics`` and
the statistics its replica pushes the same size, and counts the refusals under ``_unknown``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.metrics_labels import UNKNOWN_ENDPOINT
from modelyard.server import AllInOneApp, create_all_in_one_app
from modelyard.settings import Settings
from modelyard.store.tables import ReplicaStatsRow
from tests.monitoring.tools import samples, value
from tests.servers import free_port, run_uvicorn_in_thread, wait_for_port
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

pytestmark = pytest.mark.slow

KNOWN = {("iris", "1"), ("iris", ""), (UNKNOWN_ENDPOINT, "")}
"""Every (endpoint, version) label a request may bring here: iris/1, /serve/iris, the fixed one."""


def endpoint_labels(text: str) -> set[tuple[str, str]]:
    """Every distinct (endpoint, version) label pair in a Prometheus exposition."""
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "endpoint" in sample.labels:
                found.add((sample.labels["endpoint"], sample.labels.get("version", "")))
    return found


class Server:
    def __init__(self, url: str, grpc_target: str, app: AllInOneApp, settings: Settings) -> None:
        self.url, self.grpc_target, self.app, self.settings = url, grpc_target, app, settings

    def metrics_text(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=30)
        assert response.status_code == 200
        return response.text

    def stored_stats(self) -> list[dict[str, Any]]:
        """The statistics documents the control plane holds for the service (current ones)."""
        db = self.app.control.state.monitoring.db
        with db.read() as session:
            return [row.current for row in session.scalars(select(ReplicaStatsRow))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cardinality")
    grpc_port = free_port()
    settings = Settings(  # type: ignore[call-arg]
        home=tmp / "home", sync_wait_s=5, stats_interval_s=0.2, grpc_port=grpc_port, _env_file=None
    )
    app = create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        wait_for_port("127.0.0.1", grpc_port)
        api = Api(url, settings.token_file().read_text().strip())
        train_sklearn(tmp / "iris.pkl")
        api.endpoint(
            endpoint="iris",
            version="1",
            engine="sklearn",
            model_id=api.model(tmp / "iris.pkl", "iris"),
            preprocess=api.code(PREPROCESS_XY),
        )
        serve = f"{url}/serve/iris/1"
        wait_for(lambda: httpx.post(serve, json={"x0": 1, "x1": 2}).status_code == 200, timeout=30)
        yield Server(url, f"127.0.0.1:{grpc_port}", app, settings)


def _random() -> str:
    return uuid.uuid4().hex


def _flood(server: Server) -> int:
    """2,200 requests naming endpoints or versions that do not exist; each must be a 404."""
    paths = (
        [f"/serve/iris/{_random()}" for _ in range(1000)]
        + [f"/serve/{_random()}" for _ in range(300)]
        + [f"/serve/{_random()}/{_random()}" for _ in range(100)]
        + [f"/v2/models/{_random()}/infer" for _ in range(300)]
        + [f"/v2/models/iris/versions/{_random()}/infer" for _ in range(200)]
        + [f"/v1/models/{_random()}:predict" for _ in range(100)]
    )

    def post(chunk: list[str]) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            return [http.post(path, json={"inputs": [], "x0": 1}).status_code for path in chunk]

    with ThreadPoolExecutor(4) as pool:
        codes = [c for part in pool.map(post, [paths[i::4] for i in range(4)]) for c in part]
    assert set(codes) == {404}, {c: codes.count(c) for c in set(codes)}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(200):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(pb.ModelInferRequest(model_name=_random(), model_version=_random()))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    return len(paths) + 200


def test_random_names_add_no_series_and_are_counted_under_the_fixed_label(server: Server) -> None:
    # the fixed label exists once anything unknown was asked for: create it before measuring
    assert httpx.post(f"{server.url}/serve/nothing-here", json={}).status_code == 404
    before_text = server.metrics_text()
    before = samples(before_text)
    assert endpoint_labels(before_text) <= KNOWN

    sent = _flood(server)

    after_text = server.metrics_text()
    after = samples(after_text)
    assert endpoint_labels(after_text) == endpoint_labels(before_text)  # no new label values
    assert set(after) == set(before)  # not a single new series
    assert len(after_text) - len(before_text) < 2048, (len(before_text), len(after_text))
    unknown = {"endpoint": UNKNOWN_ENDPOINT, "version": "", "code": "404"}
    counted = value(after, "modelyard_requests_total", **unknown) - value(
        before, "modelyard_requests_total", **unknown
    )
    assert counted == sent
    # the real endpoint still answers and is counted under its own name
    ok = {"endpoint": "iris", "version": "1", "code": "200"}
    assert httpx.post(f"{server.url}/serve/iris/1", json={"x0": 1, "x1": 2}).status_code == 200
    assert value(samples(server.metrics_text()), "modelyard_requests_total", **ok) >= 1


def test_pushed_statistics_name_only_what_the_service_has(server: Server) -> None:
    _flood(server)
    pushed_after = time.time()

    def fresh() -> list[dict[str, Any]]:
        docs = [d for d in server.stored_stats() if d.get("time", 0) > pushed_after]
        return docs if any(UNKNOWN_ENDPOINT in d["endpoints"] for d in docs) else []

    docs = wait_for(fresh, timeout=15, interval=0.1)
    for doc in docs:
        assert set(doc["endpoints"]) <= {"iris/1", "iris", UNKNOWN_ENDPOINT}, sorted(doc["endpoints"])[:5]
        assert len(orjson.dumps(doc)) < 4096  # a few entries, not one per random path
        assert len(orjson.dumps(doc)) <= server.settings.stats_max_bytes
    assert sum(d["endpoints"][UNKNOWN_ENDPOINT]["codes"]["404"] for d in docs) >= 2200
    started = time.perf_counter()
    live = httpx.get(f"{server.url}/ui/api/live", params={"service": "default"}, timeout=30)
    elapsed = time.perf_counter() - started
    assert live.status_code == 200
    assert set(live.json()["endpoints"]) <= {"iris/1", "iris", UNKNOWN_ENDPOINT}
    assert elapsed < 1.0, elapsed


def test_user_code_statistics_create_only_configured_series(server: Server, tmp_path: Path) -> None:
    """collect_custom_statistics_fn with made-up names and enum values adds nothing past the rule."""
    code = """
import uuid

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if collect_custom_statistics_fn:
            collect_custom_statistics_fn({uuid.uuid4().hex: 1, "animal": uuid.uuid4().hex, "x0": body["x0"]})
        return [[body["x0"], body["x1"]]]
"""
    api = Api(server.url, server.settings.token_file().read_text().strip())
    rule = {
        "endpoint": "pets/*",
        "log_freq": 1.0,
        "variables": [
            {"name": "animal", "kind": "enum", "values": ["cat", "dog"]},
            {"name": "x0", "kind": "scalar", "buckets": [0, 1, 2]},
        ],
    }
    assert api.http.post("/api/services/default/metrics", json=rule).status_code == 201
    train_sklearn(tmp_path / "pets.pkl")
    api.endpoint(
        endpoint="pets",
        version="1",
        engine="sklearn",
        model_id=api.model(tmp_path / "pets.pkl", "pets"),
        preprocess=api.code(code),
    )
    serve = f"{server.url}/serve/pets/1"
    wait_for(lambda: httpx.post(serve, json={"x0": 1, "x1": 2}).status_code == 200, timeout=30)
    before = samples(server.metrics_text())
    with httpx.Client(timeout=30) as http:
        for i in range(300):
            assert http.post(serve, json={"x0": i % 3, "x1": 2}).status_code == 200
    after = samples(server.metrics_text())
    assert set(after) == set(before)
    pets = {"endpoint": "pets", "version": "1"}
    other = value(after, "modelyard_custom_animal_total", value="other", **pets)
    assert other - value(before, "modelyard_custom_animal_total", value="other", **pets) == 300
