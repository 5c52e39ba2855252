"""The control plane FastAPI app (real app, real databases) served by uvicorn in a thread.

starlette's httpx.Client warns about httpx here, so the tests talk HTTP to a real server.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import threading
import time
import tracemalloc
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.settings import Settings


@pytest.fixture
def app_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def app(app_settings: Settings) -> Iterator[FastAPI]:
    application = create_control_app(app_settings)
    yield application
    application.state.db.dispose()


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    with run_uvicorn_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with serve(app) as c:
        yield c


@pytest.fixture
def admin(app_settings: Settings) -> dict[str, str]:
    return {"authorization": f"Bearer {app_settings.token_file().read_text().strip()}"}


def _upload(client: httpx.Client, admin: dict[str, str], data: bytes) -> str:
    r = client.post("/api/artifacts", content=data, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["sha256"])


def _model(client: httpx.Client, admin: dict[str, str], name: str = "iris", **kw: Any) -> dict[str, Any]:
    sha = _upload(client, admin, f"{name}{kw}".encode())
    body = {"name": name, "framework": "sklearn", "artifact_sha256": sha, **kw}
    r = client.post("/api/models", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _revision(client: httpx.Client, service: str) -> int:
    return int(client.get(f"/api/services/{service}").json()["revision"])


def test_health_and_default_service(client: httpx.Client, app_settings: Settings) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    assert [s["name"] for s in client.get("/api/services").json()] == [app_settings.service]


def test_service_crud(client: httpx.Client, admin: dict[str, str]) -> None:
    r = client.post("/api/services", json={"name": "svc", "description": "d"}, headers=admin)
    assert r.status_code == 201
    assert r.json()["revision"] == 1 and r.json()["description"] == "d"
    r = client.post("/api/services", json={"name": "svc"}, headers=admin)
    assert r.status_code == 409
    assert r.json() == {"error": "service 'svc' already exists", "kind": "conflict"}
    assert client.get("/api/services/svc").json()["name"] == "svc"
    assert client.delete("/api/services/svc", headers=admin).status_code == 204
    r = client.get("/api/services/svc")
    assert r.status_code == 404 and "service 'svc' not found" in r.json()["error"]


def test_validation_errors_are_readable(client: httpx.Client, admin: dict[str, str]) -> None:
    r = client.post("/api/services", json={"name": "a/b"}, headers=admin)
    assert r.status_code == 422
    assert r.json()["kind"] == "validation_error"
    assert "name" in r.json()["error"] and "not a valid name" in r.json()["error"]
    r = client.post("/api/services", content=b"{not json", headers=admin)
    assert r.status_code == 422 and "error" in r.json()
    r = client.get("/api/no-such-route")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_model_upload_versions_and_filters(client: httpx.Client, admin: dict[str, str]) -> None:
    first = _model(client, admin, "iris", project="p", tags=["prod"])
    second = _model(client, admin, "iris", project="p", published=True)
    other = _model(client, admin, "mnist", project="p", framework="xgboost")
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert first["artifact"]["filename"] == "model.bin" and first["artifact"]["kind"] == "file"

    def ids(query: str) -> list[str]:
        r = client.get(f"/api/models?{query}")
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()]

    assert ids("") == [other["id"], second["id"], first["id"]]
    assert ids("name=iris") == [second["id"], first["id"]]
    assert ids("name=ir") == []
    assert ids("name=.*s.*") == [other["id"], second["id"], first["id"]]
    assert ids("framework=xgboost") == [other["id"]]
    assert ids("tags=prod") == [first["id"]]
    assert ids("tags=prod&tags=other") == []
    assert ids("published=true") == [second["id"]]
    assert ids("project=nope") == []
    assert ids("limit=1") == [other["id"]]
    r = client.get("/api/models?name=(")
    assert r.status_code == 400 and "regular expression" in r.json()["error"]
    assert client.get(f"/api/models/{first['id']}").json() == first
    r = client.get("/api/models/nope")
    assert r.status_code == 404 and r.json()["error"] == "model nope not found"


def test_model_from_unknown_artifact(client: httpx.Client, admin: dict[str, str]) -> None:
    body = {"name": "m", "framework": "sklearn", "artifact_sha256": "b" * 64}
    r = client.post("/api/models", json=body, headers=admin)
    assert r.status_code == 404 and "b" * 64 in r.json()["error"]


@contextmanager
def _app_with(settings: Settings, **update: Any) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A control plane with some settings changed: its client and admin headers."""
    application = create_control_app(settings.model_copy(update=update))
    try:
        with serve(application) as client:
            yield client, {"authorization": f"Bearer {settings.token_file().read_text().strip()}"}
    finally:
        application.state.db.dispose()


def test_model_by_local_path_and_file_url(app_settings: Settings, tmp_path: Path) -> None:
    """Paths on the control plane's disk: only with ``file`` among MODELYARD_MODEL_URL_SCHEMES
    (tests/registry/test_model_url_policy.py: refused by default)."""
    schemes = [*app_settings.model_url_schemes, "file"]
    src = tmp_path / "model.pkl"
    src.write_bytes(b"pickled")
    expected = hashlib.sha256(b"pickled").hexdigest()
    with _app_with(app_settings, model_url_schemes=schemes) as (client, admin):
        for url in (str(src), src.as_uri()):
            body = {"name": "m", "framework": "sklearn", "url": url}
            r = client.post("/api/models", json=body, headers=admin)
            assert r.status_code == 201, r.text
            assert r.json()["artifact"]["sha256"] == expected
            assert r.json()["artifact"]["filename"] == "model.pkl"
            assert r.json()["url"] == url
        assert client.get(f"/api/artifacts/{expected}", headers=admin).content == b"pickled"
        body = {"name": "m", "framework": "sklearn", "url": str(tmp_path / "missing.pkl")}
        r = client.post("/api/models", json=body, headers=admin)
        assert r.status_code == 404 and "missing.pkl" in r.json()["error"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_model_by_http_url(app_settings: Settings, tmp_path: Path) -> None:
    """From a server on this machine: only with its network in MODELYARD_MODEL_URL_PRIVATE_NETWORKS."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "net.onnx").write_bytes(b"onnx" * 1000)

    def handler(*args: Any, **kwargs: Any) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(www), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/net.onnx"
        with _app_with(app_settings, model_url_private_networks=["127.0.0.1/32"]) as (client, admin):
            r = client.post("/api/models", json={"name": "n", "framework": "onnx", "url": url}, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["artifact"]["sha256"] == hashlib.sha256(b"onnx" * 1000).hexdigest()
        assert r.json()["artifact"]["filename"] == "net.onnx"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_publish_tags_and_remove(client: httpx.Client, admin: dict[str, str]) -> None:
    model = _model(client, admin, "m", tags=["a"])
    mid = model["id"]
    assert client.post(f"/api/models/{mid}/publish", headers=admin).json()["published"] is True
    r = client.post(f"/api/models/{mid}/tags", json={"add": ["b"], "remove": ["a"]}, headers=admin)
    assert r.json()["tags"] == ["b"]
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    ep = {"endpoint": "iris", "version": "1", "engine": "sklearn", "model_id": mid}
    assert client.post("/api/services/svc/endpoints", json=ep, headers=admin).status_code == 201
    r = client.delete(f"/api/models/{mid}", headers=admin)
    assert r.status_code == 409
    assert r.json()["error"] == f"model {mid} (m) is used by endpoint 'iris/1' in service 'svc'"
    assert client.delete("/api/services/svc/endpoints/iris/1", headers=admin).status_code == 204
    assert client.delete(f"/api/models/{mid}", headers=admin).status_code == 204
    assert client.get(f"/api/models/{mid}").status_code == 404


def test_endpoint_writes_bump_revision_by_one(client: httpx.Client, admin: dict[str, str]) -> None:
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    older = _model(client, admin, "iris", published=True)
    newest = _model(client, admin, "iris", published=True)
    _model(client, admin, "iris")  # newer, unpublished: not picked
    spec = {
        "endpoint": "iris",
        "version": "1",
        "engine": "sklearn",
        "model_query": {"name": "iris", "published": True},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
    }
    r = client.post("/api/services/svc/endpoints", json=spec, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["model_id"] == newest["id"] and r.json()["key"] == "iris/1"
    assert "model_query" not in r.json()
    assert _revision(client, "svc") == 2
    spec2 = {"endpoint": "iris", "version": "1", "engine": "sklearn", "model_id": older["id"]}
    r = client.post("/api/services/svc/endpoints", json=spec2, headers=admin)
    assert r.status_code == 200 and r.json()["inputs"] == []
    assert _revision(client, "svc") == 3
    r = client.patch("/api/services/svc/endpoints/iris/1", json={"options": {"a": 1}}, headers=admin)
    assert r.status_code == 200 and r.json()["options"] == {"a": 1}
    assert r.json()["model_id"] == older["id"]
    assert _revision(client, "svc") == 4
    assert client.get("/api/services/svc/endpoints/iris/1", headers=admin).json()["options"] == {"a": 1}
    assert [e["key"] for e in client.get("/api/services/svc/endpoints").json()] == ["iris/1"]
    assert client.delete("/api/services/svc/endpoints/iris/1", headers=admin).status_code == 204
    assert _revision(client, "svc") == 5
    r = client.get("/api/services/svc/endpoints/iris/1")
    assert r.status_code == 404 and "endpoint 'iris/1' not found in service 'svc'" in r.json()["error"]


def test_endpoint_errors_name_the_thing(client: httpx.Client, admin: dict[str, str]) -> None:
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    url = "/api/services/svc/endpoints"
    r = client.post(url, json={"endpoint": "e", "engine": "warp"}, headers=admin)
    assert r.status_code == 400 and "unknown engine 'warp'" in r.json()["error"]
    r = client.post(url, json={"endpoint": "e", "engine": "sklearn", "model_id": "m1"}, headers=admin)
    assert r.status_code == 404 and r.json()["error"] == "model m1 not found"
    pre = {"sha256": "c" * 64, "filename": "pre.py", "kind": "file"}
    r = client.post(url, json={"endpoint": "e", "engine": "custom", "preprocess": pre}, headers=admin)
    assert r.status_code == 404 and "c" * 64 in r.json()["error"]
    query = {"name": "ghost"}
    r = client.post(url, json={"endpoint": "e", "engine": "sklearn", "model_query": query}, headers=admin)
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    r = client.post(
        "/api/services/nosvc/endpoints", json={"endpoint": "e", "engine": "custom"}, headers=admin
    )
    assert r.status_code == 404 and "service 'nosvc' not found" in r.json()["error"]
    assert _revision(client, "svc") == 1


def test_services_are_separate(client: httpx.Client, admin: dict[str, str]) -> None:
    for name in ("a", "b"):
        client.post("/api/services", json={"name": name}, headers=admin)
    client.post("/api/services/a/endpoints", json={"endpoint": "e", "engine": "custom"}, headers=admin)
    assert client.get("/api/services/b/endpoints").json() == []
    assert client.get("/api/services/b/config").json()["endpoints"] == []
    assert [e["endpoint"] for e in client.get("/api/services/a/config").json()["endpoints"]] == ["e"]
    assert (_revision(client, "a"), _revision(client, "b")) == (2, 1)


def test_config_long_poll(client: httpx.Client, admin: dict[str, str], app: FastAPI) -> None:
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    r = client.get("/api/services/svc/config")
    assert r.status_code == 200 and r.json()["revision"] == 1
    t0 = time.monotonic()
    r = client.get("/api/services/svc/config?after=0&wait=10")
    assert r.status_code == 200 and r.json()["service"] == "svc"
    assert time.monotonic() - t0 < 2  # answered at once: revision 1 > 0
    t0 = time.monotonic()
    r = client.get("/api/services/svc/config?after=1&wait=0.4")
    assert r.status_code == 304 and r.content == b""
    assert 0.35 <= time.monotonic() - t0 < 3

    def write_later() -> None:
        time.sleep(0.3)
        client.post("/api/services/svc/endpoints", json={"endpoint": "e", "engine": "custom"}, headers=admin)

    writer = threading.Thread(target=write_later)
    t0 = time.monotonic()
    writer.start()
    r = client.get("/api/services/svc/config?after=1&wait=20")
    writer.join()
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert [e["endpoint"] for e in r.json()["endpoints"]] == ["e"]
    assert time.monotonic() - t0 < 5  # woke early instead of waiting 20 s
    assert client.get("/api/services/nope/config?after=0&wait=1").status_code == 404
    # a replica ahead of the control plane (service re-created) gets the current config at once
    t0 = time.monotonic()
    r = client.get("/api/services/svc/config?after=99&wait=10")
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert time.monotonic() - t0 < 2


def test_config_long_poll_sees_writes_of_other_processes(
    client: httpx.Client, admin: dict[str, str], app_settings: Settings
) -> None:
    """A second control plane on the same database (another process) changes the revision."""
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    other = create_control_app(app_settings)  # own Database and listeners: no in-process wake-up
    from modelyard.control import EndpointSpec

    def write_later() -> None:
        time.sleep(0.3)
        other.state.plane.add_endpoint("svc", EndpointSpec(endpoint="x", engine="custom"))

    writer = threading.Thread(target=write_later)
    t0 = time.monotonic()
    writer.start()
    r = client.get("/api/services/svc/config?after=1&wait=20")
    writer.join()
    other.state.db.dispose()
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert time.monotonic() - t0 < 5


def test_replica_reports(client: httpx.Client, admin: dict[str, str]) -> None:
    client.post("/api/services", json={"name": "svc"}, headers=admin)
    report = {"revision": 1, "endpoints": [{"key": "e", "state": "ready", "engine": "custom"}]}
    assert client.put("/api/services/svc/replicas/r-1", json=report, headers=admin).status_code == 204
    status = client.get("/api/services/svc/status").json()
    assert status["service"] == "svc" and status["revision"] == 1
    assert [(r["id"], r["revision"]) for r in status["replicas"]] == [("r-1", 1)]
    assert status["replicas"][0]["endpoints"][0]["state"] == "ready"
    r = client.put("/api/services/svc/replicas/r-1", json=report, headers={"authorization": "Bearer x"})
    assert r.status_code == 403


def test_auth(client: httpx.Client, admin: dict[str, str]) -> None:
    r = client.post("/api/services", json={"name": "s"})
    assert r.status_code == 401 and r.json()["kind"] == "unauthorized"
    r = client.post("/api/services", json={"name": "s"}, headers={"authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["kind"] == "forbidden"
    r = client.post("/api/services", json={"name": "s"}, headers={"authorization": "Basic abc"})
    assert r.status_code == 401
    r = client.post("/api/tokens", json={"name": "ro", "role": "reader"}, headers=admin)
    assert r.status_code == 201 and r.json()["role"] == "reader"
    reader = {"authorization": f"Bearer {r.json()['token']}"}
    r = client.post("/api/services", json={"name": "s"}, headers=reader)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    assert client.delete("/api/models/x", headers=reader).status_code == 403
    assert client.get("/api/services", headers=reader).status_code == 200
    report = {"revision": 0, "endpoints": []}
    refused = client.put("/api/services/default/replicas/r", json=report, headers=reader)
    assert refused.status_code == 403 and "replica (or admin) token" in refused.json()["error"]
    r = client.post("/api/tokens", json={"name": "rep", "role": "replica"}, headers=admin)
    assert r.status_code == 201 and r.json()["role"] == "replica"
    replica = {"authorization": f"Bearer {r.json()['token']}"}
    assert client.put("/api/services/default/replicas/r", json=report, headers=replica).status_code == 204
    assert client.post("/api/services", json={"name": "s"}, headers=replica).status_code == 403
    names = [t["name"] for t in client.get("/api/tokens", headers=admin).json()]
    assert names == ["admin", "rep", "ro"]
    assert "token" not in client.get("/api/tokens", headers=admin).json()[0]
    assert client.delete("/api/tokens/ro", headers=admin).status_code == 204
    assert client.get("/api/services", headers=reader).status_code == 200  # reads are open
    assert client.post("/api/services", json={"name": "s"}, headers=reader).status_code == 403


def test_reads_can_require_a_token(app_settings: Settings) -> None:
    locked = create_control_app(app_settings.model_copy(update={"require_token_for_reads": True}))
    token = app_settings.token_file().read_text().strip()
    with serve(locked) as client:
        assert client.get("/api/services").status_code == 401
        assert client.get("/api/services", headers={"authorization": "Bearer no"}).status_code == 403
        r = client.post(
            "/api/tokens", json={"name": "ro", "role": "reader"}, headers={"authorization": f"Bearer {token}"}
        )
        reader = {"authorization": f"Bearer {r.json()['token']}"}
        assert client.get("/api/services", headers=reader).status_code == 200
        assert client.get("/api/services/default/config", headers=reader).status_code == 200
        assert client.put("/api/services/default/replicas/r", json={"revision": 0}).status_code == 401
        assert client.get("/api/health").status_code == 200
    locked.state.db.dispose()


def test_token_file_created_once_with_0600(app_settings: Settings) -> None:
    first_app = create_control_app(app_settings)
    token_file = app_settings.token_file()
    token = token_file.read_text().strip()
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    second_app = create_control_app(app_settings)  # migrations again, same token
    assert token_file.read_text().strip() == token
    with serve(second_app) as client:
        headers = {"authorization": f"Bearer {token}"}
        assert client.post("/api/services", json={"name": "x"}, headers=headers).status_code == 201
        assert [t["name"] for t in client.get("/api/tokens", headers=headers).json()] == ["admin"]
    first_app.state.db.dispose()
    second_app.state.db.dispose()


def test_unexpected_errors_are_500_without_traceback(app: FastAPI, admin: dict[str, str]) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals")

    app.state.plane.list_services = explode
    with serve(app) as client:
        r = client.get("/api/services")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "kind": "internal"}
    assert "secret" not in r.text


def test_big_artifact_streamed_and_verified(client: httpx.Client, admin: dict[str, str]) -> None:
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    for i in range(20):
        digest.update(block[i:] + block[:i])

    def chunks() -> Iterator[bytes]:
        for i in range(20):
            yield block[i:] + block[:i]

    r = client.post(f"/api/artifacts?sha256={digest.hexdigest()}", content=chunks(), headers=admin)
    assert r.status_code == 201, r.text
    assert r.json() == {"sha256": digest.hexdigest(), "size": 20 * 1024 * 1024}
    down = hashlib.sha256()
    with client.stream("GET", f"/api/artifacts/{digest.hexdigest()}", headers=admin) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(20 * 1024 * 1024)
        for part in response.iter_bytes():
            down.update(part)
    assert down.hexdigest() == digest.hexdigest()
    r = client.post(f"/api/artifacts?sha256={'0' * 64}", content=b"x", headers=admin)
    assert r.status_code == 400 and "expected sha256" in r.json()["error"]
    assert client.get(f"/api/artifacts/{'0' * 64}", headers=admin).status_code == 404
    bad = client.get("/api/artifacts/not-a-hash", headers=admin)
    assert bad.status_code == 422 and "sha256" in bad.json()["error"]


def test_upload_memory_stays_bounded(app: FastAPI, admin: dict[str, str]) -> None:
    """A 20 MB body goes to disk chunk by chunk: peak Python memory stays far below its size."""
    chunk_size, count = 64 * 1024, 320  # 20 MiB
    seed = os.urandom(chunk_size)
    digest = hashlib.sha256()
    sent = 0
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent == count:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = bytes([sent % 256]) + seed[1:]
        digest.update(chunk)
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/artifacts",
        "raw_path": b"/api/artifacts",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", admin["authorization"].encode()),
            (b"content-type", b"application/octet-stream"),
        ],
        "client": ("127.0.0.1", 12345),
        "server": ("127.0.0.1", 80),
    }
    tracemalloc.start()
    try:
        anyio.run(app, scope, receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert messages[0]["status"] == 201
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    assert body == {"sha256": digest.hexdigest(), "size": chunk_size * count}
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a 20 MiB upload"


def test_long_poll_stops_when_the_client_leaves(client: httpx.Client, app: FastAPI) -> None:
    plane = app.state.plane
    real = plane.current_revision
    calls = 0

    def counting(service: str) -> int:
        nonlocal calls
        calls += 1
        return int(real(service))

    plane.current_revision = counting
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/services/default/config?after=1&wait=30", timeout=0.3)
    time.sleep(0.4)
    settled = calls
    time.sleep(0.5)
    assert calls - settled <= 1  # no poll keeps checking for the client that left


def test_in_process_asgi_transport(app: FastAPI, admin: dict[str, str]) -> None:
    """The all-in-one server's replica reaches the control plane through httpx.ASGITransport."""

    async def scenario() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
            first = await c.get("/api/services/default/config")
            rev = first.json()["revision"]
            idle = await c.get(f"/api/services/default/config?after={rev}&wait=0.3")

            async def write_later() -> None:
                await anyio.sleep(0.2)
                spec = {"endpoint": "e", "engine": "custom"}
                await c.post("/api/services/default/endpoints", json=spec, headers=admin)

            async with anyio.create_task_group() as tg:
                tg.start_soon(write_later)
                changed = await c.get(f"/api/services/default/config?after={rev}&wait=10")
            return idle.status_code, changed.status_code, changed.json()["revision"] - rev

    assert anyio.run(scenario) == (304, 200, 1)
