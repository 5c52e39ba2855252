"""The control plane bounds what statistics pushes can store: size, entries and replica rows.

Any replica token holder can push, so a push is refused past
``stats_max_bytes`` before it is read whole, keeps only entries the service has, and a service
keeps at most ``stats_max_replicas`` rows; rows of replicas silent for minutes go.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from modelyard.control.api import create_control_app
from modelyard.control.monitoring import STATS_KEEP_S
from modelyard.metrics_labels import HTTP_METHODS, UNKNOWN_ENDPOINT
from modelyard.settings import Settings
from modelyard.store import Database, utcnow
from modelyard.store.tables import ReplicaStatsRow
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api

pytestmark = pytest.mark.slow

MAX_BYTES = 4096
MAX_REPLICAS = 5
STATS = "/api/services/default/replicas/{}/stats"
CUSTOM = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        return data
"""


@dataclass
class Control:
    http: httpx.Client
    reader: dict[str, str]
    db: Database

    def push(self, replica: str, endpoints: dict[str, Any], time: float = 1.0) -> httpx.Response:
        return self.http.put(
            STATS.format(replica), json={"time": time, "endpoints": endpoints}, headers=self.reader
        )

    def rows(self) -> dict[str, dict[str, Any]]:
        with self.db.read() as session:
            return {r.replica_id: r.current for r in session.scalars(select(ReplicaStatsRow))}


@pytest.fixture
def control(settings: Settings, database_url: str) -> Iterator[Control]:
    settings = settings.model_copy(
        update={
            "database_url": database_url,
            "stats_max_bytes": MAX_BYTES,
            "stats_max_replicas": MAX_REPLICAS,
        }
    )
    app = create_control_app(settings)
    admin = settings.token_file().read_text().strip()
    with run_uvicorn_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        api = Api(url, admin)
        api.endpoint(endpoint="iris", version="1", engine="custom", preprocess=api.code(CUSTOM))
        created = api.http.post("/api/tokens", json={"name": "replica", "role": "replica"})
        reader = {"authorization": f"Bearer {created.json()['token']}"}
        yield Control(http, reader, app.state.monitoring.db)
    app.state.db.dispose()


def entry(n: int = 1) -> dict[str, Any]:
    return {"codes": {"200": n}, "count": n, "sum": 0.01 * n, "buckets": [["0.01", n], ["+Inf", n]]}


def test_an_oversized_push_is_refused_and_nothing_is_stored(control: Control) -> None:
    huge = {f"iris/{i}": entry(i) for i in range(20_000)}  # ~1.6 MB of JSON
    refused = control.push("r-1", huge)
    assert refused.status_code == 413, refused.text
    assert refused.json()["kind"] == "payload_too_large" and str(MAX_BYTES) in refused.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the body passes the limit
        yield b'{"time": 1, "endpoints": {'
        for i in range(100_000):
            yield b'"iris/%d": {"count": 1},' % i

    streamed = control.http.put(STATS.format("r-2"), content=chunks(), headers=control.reader)
    assert streamed.status_code == 413, streamed.text
    anonymous = control.http.put(STATS.format("r-3"), content=b"x" * 2_000_000)
    assert anonymous.status_code == 401  # the token is checked before the body is read
    assert control.rows() == {}
    assert control.push("r-1", {"iris/1": entry()}).status_code == 204  # a normal push still works
    assert set(control.rows()) == {"r-1"}


def test_a_push_keeps_only_what_the_service_has(control: Control) -> None:
    junk = {f"iris/{i}x": entry() for i in range(10)} | {"nope": entry(), "a/b/c": entry()}
    response = control.push("r-1", {"iris/1": entry(3), UNKNOWN_ENDPOINT: {"codes": {"404": 7}}, **junk})
    assert response.status_code == 204, response.text
    assert set(control.rows()["r-1"]["endpoints"]) == {"iris/1", UNKNOWN_ENDPOINT}
    assert control.push("r-1", {"iris/1": entry(5)}, time=2.0).status_code == 204
    live = control.http.get("/api/services/default/live").json()
    assert set(live["endpoints"]) <= {"iris/1", UNKNOWN_ENDPOINT}


@pytest.mark.parametrize(
    "endpoints",
    [
        {"iris/1": {"codes": {"abc": 1}}},
        {"iris/1": {"codes": {"200": -1}}},
        {"iris/1": {"buckets": [["not-a-number", 1]]}},
        {"iris/1": {"buckets": [["0.1", 1]] * 33}},
        {"iris/1": {"codes": {str(code): 1 for code in range(200, 240)}}},
        {"iris/1": "not an object"},
    ],
)
def test_a_malformed_push_is_a_422(control: Control, endpoints: dict[str, Any]) -> None:
    response = control.push("r-1", endpoints)
    assert response.status_code == 422, response.text
    assert control.rows() == {}


def test_replica_rows_are_bounded_per_service(control: Control) -> None:
    for i in range(30):
        assert control.push(f"made-up-{i}", {"iris/1": entry()}).status_code == 204
    assert set(control.rows()) == {f"made-up-{i}" for i in range(25, 30)}  # the newest ones
    too_long = control.push("r" * 300, {})
    assert too_long.status_code == 400, too_long.text


def test_rows_of_silent_replicas_expire(control: Control) -> None:
    assert control.push("old", {"iris/1": entry()}).status_code == 204
    with control.db.write() as session:
        session.execute(
            update(ReplicaStatsRow).values(updated_at=utcnow() - timedelta(seconds=STATS_KEEP_S + 1))
        )
    assert control.push("new", {"iris/1": entry()}).status_code == 204
    assert set(control.rows()) == {"new"}


def test_odd_http_methods_are_one_label(settings: Settings) -> None:
    """h11 hands any token to the app as a method; the API counters label them all ``other``."""
    app = create_control_app(settings)
    with run_uvicorn_in_thread(app, http="h11") as url, httpx.Client(base_url=url, timeout=30) as http:
        for i in range(50):
            assert http.request(f"M{uuid.uuid4().hex[:8]}{i}", "/api/health").status_code == 405
        text = http.get("/metrics").text
    methods = {
        sample.labels["method"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "method" in sample.labels
    }
    assert "other" in methods
    assert methods <= HTTP_METHODS | {"other"}, methods
    app.state.db.dispose()
