"""``modelyard serve --workers 2``: random endpoint names grow neither the shared Prometheus
multiprocess files nor the scrape that sums them, nor what each worker pushes as statistics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from modelyard.metrics import FLUSH_INTERVAL_S
from modelyard.metrics_labels import UNKNOWN_ENDPOINT
from modelyard.settings import Settings
from modelyard.store import Database
from modelyard.store.tables import ReplicaStatsRow
from tests.monitoring.test_metrics_cardinality_e2e import endpoint_labels
from tests.monitoring.tools import samples, serve_workers, value
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

pytestmark = pytest.mark.slow


class Running:
    def __init__(self, url: str, home: Path, metrics_dir: Path) -> None:
        self.url, self.home, self.metrics_dir = url, home, metrics_dir

    def scrape(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=30)  # a new connection: either worker
        assert response.status_code == 200, response.text
        return response.text

    def metric_files(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in self.metrics_dir.iterdir()}

    def stored_stats(self) -> list[dict[str, Any]]:
        settings = Settings(home=self.home, _env_file=None)  # type: ignore[call-arg]
        db = Database(settings.resolved_database_url())
        try:
            with db.read() as session:
                return [row.current for row in session.scalars(select(ReplicaStatsRow))]
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("home")
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    settings = {"MODELYARD_STATS_INTERVAL_S": "0.3", "MODELYARD_METRICS_DIR": str(metrics_dir)}
    with serve_workers(home, **settings) as (url, _env):
        yield Running(url, home, metrics_dir)


def test_random_names_do_not_grow_the_shared_metrics(running: Running, tmp_path: Path) -> None:
    api = Api(running.url, (running.home / "token").read_text().strip())
    train_sklearn(tmp_path / "m.pkl")
    api.endpoint(
        endpoint="iris",
        version="1",
        engine="sklearn",
        model_id=api.model(tmp_path / "m.pkl", "iris"),
        preprocess=api.code(PREPROCESS_XY),
    )
    serve = f"{running.url}/serve/iris/1"
    wait_for(  # both workers sync on their own: 20 fresh connections in a row served
        lambda: all(httpx.post(serve, json={"x0": 1, "x1": 2}).status_code == 200 for _ in range(20)),
        timeout=60,
        interval=0.2,
    )
    for _ in range(20):  # the fixed label, on both workers, before measuring
        assert httpx.post(f"{running.url}/serve/nothing-here", json={}).status_code == 404
    time.sleep(3 * FLUSH_INTERVAL_S)
    before_text = running.scrape()
    before_files = running.metric_files()

    paths = [f"/serve/iris/{uuid.uuid4().hex}" for _ in range(1500)]
    paths += [f"/v2/models/{uuid.uuid4().hex}/infer" for _ in range(500)]

    def post(chunk: list[str]) -> list[int]:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            return [http.post(path, json={"inputs": []}).status_code for path in chunk]

    with ThreadPoolExecutor(4) as pool:  # four connections: both workers get some
        codes = [c for part in pool.map(post, [paths[i::4] for i in range(4)]) for c in part]
    assert set(codes) == {404}
    time.sleep(3 * FLUSH_INTERVAL_S)

    scrapes = [running.scrape() for _ in range(6)]  # answered by either worker
    for text in scrapes:
        assert endpoint_labels(text) == endpoint_labels(before_text)
        assert endpoint_labels(text) <= {("iris", "1"), (UNKNOWN_ENDPOINT, "")}
        assert len(text) - len(before_text) < 2048, (len(before_text), len(text))
        unknown = {"endpoint": UNKNOWN_ENDPOINT, "version": "", "code": "404"}
        counted = value(samples(text), "modelyard_requests_total", **unknown)
        assert counted - value(samples(before_text), "modelyard_requests_total", **unknown) == len(paths)
    assert running.metric_files() == before_files  # the mmap files did not grow either

    def pushed() -> list[dict[str, Any]]:
        docs = running.stored_stats()
        counts = [d["endpoints"].get(UNKNOWN_ENDPOINT, {}).get("codes", {}).get("404", 0) for d in docs]
        return docs if sum(counts) >= len(paths) else []

    docs = wait_for(pushed, timeout=20, interval=0.2)
    assert len(docs) == 2  # one row per worker
    for doc in docs:
        assert set(doc["endpoints"]) <= {"iris/1", UNKNOWN_ENDPOINT}
        assert len(orjson.dumps(doc)) < 4096
