"""The all-in-one server on real uvicorn: endpoints go live without restarts, bad input gets clear errors."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, status_of, train_sklearn, wait_for


class Server:
    def __init__(self, url: str, api: Api, tmp: Path) -> None:
        self.url = url
        self.api = api
        self.tmp = tmp

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=30, **kwargs)

    def sklearn_endpoint(self, name: str, version: str = "1", tag: str = "v1", seed: int = 0) -> str:
        model_path = self.tmp / f"{name}-{version}-{seed}.pkl"
        train_sklearn(model_path, seed)
        model_id = self.api.model(model_path, name)
        self.api.endpoint(
            endpoint=name,
            version=version,
            engine="sklearn",
            model_id=model_id,
            preprocess=self.api.code(PREPROCESS_XY.replace("TAG", tag)),
        )
        return model_id


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    settings = settings.model_copy(update={"max_body_bytes": 64 * 1024, "sync_wait_s": 5})
    app = create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        token = settings.token_file().read_text().strip()
        yield Server(url, Api(url, token), tmp_path)


def served(server: Server, path: str, body: Any = None) -> httpx.Response | None:
    response = server.post(path, json=body if body is not None else {"x0": 1, "x1": 2})
    return response if response.status_code == 200 else None


def test_endpoint_answers_soon_after_add_without_restart(server: Server, tmp_path: Path) -> None:
    model = train_sklearn(tmp_path / "m.pkl")
    model_id = server.api.model(tmp_path / "m.pkl", "iris")
    started = time.monotonic()
    server.api.endpoint(
        endpoint="iris",
        version="1",
        engine="sklearn",
        model_id=model_id,
        preprocess=server.api.code(PREPROCESS_XY),
    )
    response = wait_for(lambda: served(server, "/serve/iris/1"), timeout=5)
    assert time.monotonic() - started < 1.5
    expected = model.predict(np.array([[1, 2]])).tolist()
    assert response.json() == {"y": expected, "code": "TAG"}
    assert response.headers["x-modelyard-endpoint"] == "iris/1"


def test_no_version_serves_the_highest_version(server: Server) -> None:
    server.sklearn_endpoint("iris", "2", tag="two")
    server.sklearn_endpoint("iris", "10", tag="ten")
    wait_for(lambda: served(server, "/serve/iris/10") and served(server, "/serve/iris/2"))
    response = server.post("/serve/iris", json={"x0": 1, "x1": 2})
    assert response.json()["code"] == "ten"
    assert response.headers["x-modelyard-endpoint"] == "iris/10"


def test_unversioned_endpoint_wins_over_versions(server: Server, tmp_path: Path) -> None:
    server.sklearn_endpoint("iris", "3", tag="three")
    train_sklearn(tmp_path / "u.pkl")
    server.api.endpoint(
        endpoint="iris",
        engine="sklearn",
        model_id=server.api.model(tmp_path / "u.pkl", "u"),
        preprocess=server.api.code(PREPROCESS_XY.replace("TAG", "plain")),
    )
    response = wait_for(lambda: served(server, "/serve/iris"))
    assert response.json()["code"] == "plain"
    assert response.headers["x-modelyard-endpoint"] == "iris"


def test_preprocess_change_is_live_quickly_and_other_endpoints_stay_loaded(server: Server) -> None:
    server.sklearn_endpoint("a", tag="a1")
    server.sklearn_endpoint("b", tag="b1")
    wait_for(lambda: served(server, "/serve/a/1") and served(server, "/serve/b/1"))
    b_loaded = status_of(server.url, "b/1")
    assert b_loaded is not None and b_loaded["state"] == "ready"
    started = time.monotonic()
    server.api.patch("a/1", preprocess=server.api.code(PREPROCESS_XY.replace("TAG", "a2")))
    wait_for(lambda: server.post("/serve/a/1", json={"x0": 1, "x1": 2}).json()["code"] == "a2")
    assert time.monotonic() - started < 1.5
    assert status_of(server.url, "b/1") == b_loaded  # same load: b was not reloaded


SLOW_PREPROCESS = """
import time

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        time.sleep(body.get("sleep", 0))
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"code": "TAG"}
"""


def test_requests_in_flight_finish_on_the_old_code(server: Server, tmp_path: Path) -> None:
    train_sklearn(tmp_path / "m.pkl")
    model_id = server.api.model(tmp_path / "m.pkl", "slow")
    server.api.endpoint(
        endpoint="slow",
        version="1",
        engine="sklearn",
        model_id=model_id,
        preprocess=server.api.code(SLOW_PREPROCESS.replace("TAG", "old")),
    )
    wait_for(lambda: served(server, "/serve/slow/1"))
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(server.post("/serve/slow/1", json={"x0": 1, "x1": 2, "sleep": 1.0}))
    )
    thread.start()
    time.sleep(0.2)  # the slow request is inside the old preprocess now
    server.api.patch("slow/1", preprocess=server.api.code(SLOW_PREPROCESS.replace("TAG", "new")))
    wait_for(lambda: server.post("/serve/slow/1", json={"x0": 1, "x1": 2}).json()["code"] == "new")
    thread.join(10)
    assert answers[0].status_code == 200
    assert answers[0].json() == {"code": "old"}


def test_removed_endpoint_is_gone(server: Server) -> None:
    server.sklearn_endpoint("gone")
    wait_for(lambda: served(server, "/serve/gone/1"))
    server.api.remove("gone/1")
    wait_for(lambda: server.post("/serve/gone/1", json={"x0": 1, "x1": 2}).status_code == 404)


def test_unknown_endpoint_and_version_are_404_naming_them(server: Server) -> None:
    server.sklearn_endpoint("known")
    wait_for(lambda: served(server, "/serve/known/1"))
    response = server.post("/serve/nope", json={})
    assert response.status_code == 404
    assert "'nope'" in response.json()["error"]
    response = server.post("/serve/known/7", json={})
    assert response.status_code == 404
    assert "'known/7'" in response.json()["error"]


def test_malformed_json_and_gzip_are_400(server: Server) -> None:
    server.sklearn_endpoint("iris")
    wait_for(lambda: served(server, "/serve/iris/1"))
    response = server.post(
        "/serve/iris/1", content=b'{"x0": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]
    response = server.post(
        "/serve/iris/1",
        content=b"not gzip",
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "malformed gzip" in response.json()["error"]


def test_gzip_body_is_accepted(server: Server) -> None:
    server.sklearn_endpoint("iris")
    wait_for(lambda: served(server, "/serve/iris/1"))
    response = server.post(
        "/serve/iris/1",
        content=gzip.compress(b'{"x0": 1, "x1": 2}'),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "v1"


def test_oversized_bodies_and_gzip_bombs_are_413(server: Server) -> None:
    server.sklearn_endpoint("iris")
    wait_for(lambda: served(server, "/serve/iris/1"))
    response = server.post(
        "/serve/iris/1", content=b"x" * (65 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))
    response = server.post(
        "/serve/iris/1",
        content=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]
    # no Content-Length (chunked transfer): counted as it arrives, whole or in pieces
    for chunks in ([b"x" * (65 * 1024)], [b"x" * 1024] * 65):
        response = server.post(
            "/serve/iris/1", content=iter(chunks), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert "request body is larger than the limit" in response.json()["error"]
    response = server.post(
        "/serve/iris/1",
        content=iter([b'{"x0": 1,', b' "x1": 2}']),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_user_code_exception_is_422_and_isolated(server: Server, tmp_path: Path) -> None:
    server.sklearn_endpoint("healthy")
    train_sklearn(tmp_path / "m.pkl")
    broken = (
        "class Preprocess:\n"
        "    def preprocess(self, body, state, fn=None):\n"
        "        raise ValueError('x0 must be positive')\n"
    )
    server.api.endpoint(
        endpoint="broken",
        version="1",
        engine="sklearn",
        model_id=server.api.model(tmp_path / "m.pkl", "broken"),
        preprocess=server.api.code(broken),
    )
    wait_for(lambda: served(server, "/serve/healthy/1"))
    response = wait_for(lambda: (r := server.post("/serve/broken/1", json={})).status_code == 422 and r)
    assert "x0 must be positive" in response.json()["error"]
    assert "Traceback" not in response.text
    assert served(server, "/serve/healthy/1") is not None


def test_corrupt_model_file_fails_only_its_endpoint(server: Server, tmp_path: Path) -> None:
    server.sklearn_endpoint("healthy")
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"this is not a pickle")
    server.api.endpoint(
        endpoint="corrupt", version="1", engine="sklearn", model_id=server.api.model(corrupt, "corrupt")
    )
    status = wait_for(lambda: (s := status_of(server.url, "corrupt/1")) and s["state"] == "failed" and s)
    assert "corrupt.pkl" in status["error"]
    response = server.post("/serve/corrupt/1", json={"x0": 1, "x1": 2})
    assert response.status_code == 503
    assert "failed to load" in response.json()["error"]
    assert wait_for(lambda: served(server, "/serve/healthy/1")) is not None


def test_preprocess_syntax_error_add_succeeds_status_shows_it(server: Server, tmp_path: Path) -> None:
    train_sklearn(tmp_path / "m.pkl")
    server.api.endpoint(
        endpoint="syntax",
        version="1",
        engine="sklearn",
        model_id=server.api.model(tmp_path / "m.pkl", "syntax"),
        preprocess=server.api.code("class Preprocess:\n    def preprocess(self, body:\n        pass\n"),
    )
    status = wait_for(lambda: (s := status_of(server.url, "syntax/1")) and s["state"] == "failed" and s)
    assert "preprocess.py" in status["error"]
    response = server.post("/serve/syntax/1", json={})
    assert response.status_code == 503
    assert "preprocess.py" in response.json()["error"]


def test_wrong_method_and_unknown_route(server: Server) -> None:
    assert httpx.get(f"{server.url}/serve/iris").status_code == 405
    response = httpx.get(f"{server.url}/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "no route for GET /nothing-here"


def test_health_and_status(server: Server) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "live"}
    wait_for(lambda: httpx.get(f"{server.url}/health/ready").status_code == 200)
    server.sklearn_endpoint("iris")
    wait_for(lambda: served(server, "/serve/iris/1"))
    status = httpx.get(f"{server.url}/status").json()
    assert status["service"] == "default"
    assert status["revision"] >= 1
    assert [e["key"] for e in status["endpoints"]] == ["iris/1"]
    assert status["endpoints"][0]["state"] == "ready"
    # a small sklearn model: measured fast, so after a streak of calls its chain runs inline.
    # (A generous per-endpoint limit: under pytest, whose warning filters sklearn re-installs on
    # every call, the same chain costs several times what it costs in a server.)
    model_id = server.sklearn_endpoint("quick")
    server.api.endpoint(
        endpoint="quick",
        version="1",
        engine="sklearn",
        model_id=model_id,
        preprocess=server.api.code(PREPROCESS_XY),
        options={"inline_max_ms": 25},
    )

    def placement() -> dict[str, Any] | None:
        for _ in range(10):
            assert served(server, "/serve/quick/1")
        entries = httpx.get(f"{server.url}/status").json()["endpoints"]
        found = next(e for e in entries if e["key"] == "quick/1").get("placement")
        return found if found and found["inline"] else None

    found = wait_for(placement, timeout=30)
    assert 0 < found["cpu_ms"] < found["inline_max_ms"] == 25 and "cpu_bound" in found
