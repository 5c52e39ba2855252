"""What replicas call needs a valid token: status reports, statistics pushes, artifact downloads.

Reads stay open by default, but these three do not: a report or a stats push changes what the
control plane shows (a mutating call), and an artifact is a private model. Reports and stats
need a ``replica`` (or ``admin``) token, so a ``reader`` token cannot forge them; downloads any
valid token. 401 without a token, 403 with an unknown or too weak one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

from modelyard.control.api import create_control_app
from modelyard.server import create_inference_app
from modelyard.settings import Settings


@pytest.fixture
def control(settings: Settings, database_url: str) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    app = create_control_app(settings.model_copy(update={"database_url": database_url}))
    admin = {"authorization": f"Bearer {settings.token_file().read_text().strip()}"}
    with run_uvicorn_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, admin
    app.state.db.dispose()


def _calls(client: httpx.Client, sha: str) -> dict[str, Any]:
    """Each replica call, as a function of the headers it is sent with."""
    report = {"revision": 1, "endpoints": [{"key": "e", "state": "ready", "engine": "custom"}]}
    stats = {"time": 1.0, "endpoints": {}}
    return {
        "report": lambda h: client.put("/api/services/default/replicas/r-1", json=report, headers=h),
        "stats": lambda h: client.put("/api/services/default/replicas/r-1/stats", json=stats, headers=h),
        "artifact": lambda h: client.get(f"/api/artifacts/{sha}", headers=h),
    }


def test_replica_calls_need_a_valid_token(control: tuple[httpx.Client, dict[str, str]]) -> None:
    client, admin = control
    uploaded = client.post("/api/artifacts", content=b"private model bytes", headers=admin)
    sha = uploaded.json()["sha256"]
    created = client.post("/api/tokens", json={"name": "replica", "role": "replica"}, headers=admin)
    replica = {"authorization": f"Bearer {created.json()['token']}"}
    created = client.post("/api/tokens", json={"name": "ro", "role": "reader"}, headers=admin)
    reader = {"authorization": f"Bearer {created.json()['token']}"}
    ok = {"report": 204, "stats": 204, "artifact": 200}
    for name, call in _calls(client, sha).items():
        missing = call({})
        assert missing.status_code == 401, (name, missing.text)
        assert missing.json()["kind"] == "unauthorized" and "bearer token" in missing.json()["error"]
        assert call({"authorization": "Basic abc"}).status_code == 401, name
        wrong = call({"authorization": "Bearer not-a-token"})
        assert wrong.status_code == 403, (name, wrong.text)
        assert wrong.json()["kind"] == "forbidden"
        assert call(replica).status_code == ok[name], name
        assert call(admin).status_code == ok[name], name
    assert client.get(f"/api/artifacts/{sha}", headers=replica).content == b"private model bytes"
    # a reader token reads (artifacts too) but cannot forge what replicas report
    assert client.get(f"/api/artifacts/{sha}", headers=reader).content == b"private model bytes"
    forged = {"revision": 1, "endpoints": [{"key": "e", "state": "failed", "error": "forged"}]}
    for path, body in (("r-2", forged), ("r-2/stats", {"time": 1.0, "endpoints": {}})):
        refused = client.put(f"/api/services/default/replicas/{path}", json=body, headers=reader)
        assert refused.status_code == 403, refused.text
        assert "needs a replica (or admin) token" in refused.json()["error"]
    # refused calls left nothing behind; the accepted report is there
    replicas = client.get("/api/services/default/status").json()["replicas"]
    assert [r["id"] for r in replicas] == ["r-1"]
    # a revoked token stops working at once
    assert client.delete("/api/tokens/replica", headers=admin).status_code == 204
    for name, call in _calls(client, sha).items():
        assert call(replica).status_code == 403, name


def _answer(url: str) -> str | None:
    try:
        response = httpx.post(f"{url}/serve/iris/1", json={"x0": 1, "x1": 2}, timeout=5)
    except httpx.HTTPError:
        return None
    return str(response.json()["code"]) if response.status_code == 200 else None


def _iris_status(url: str) -> dict[str, Any] | None:
    for entry in httpx.get(f"{url}/status", timeout=5).json()["endpoints"]:
        if entry["key"] == "iris/1" and entry["state"] != "loading":
            return dict(entry)
    return None


def test_standalone_replica_needs_its_token_and_sends_it(settings: Settings, tmp_path: Path) -> None:
    """Without a token a replica cannot fetch the model (a clear error), nor report; with one it can."""
    app = create_control_app(settings)
    admin_token = settings.token_file().read_text().strip()
    with run_uvicorn_in_thread(app) as control_url:
        api = Api(control_url, admin_token)
        train_sklearn(tmp_path / "m.pkl")
        api.endpoint(
            endpoint="iris",
            version="1",
            engine="sklearn",
            model_id=api.model(tmp_path / "m.pkl", "iris"),
            preprocess=api.code(PREPROCESS_XY.replace("TAG", "ok")),
        )
        replica = api.http.post("/api/tokens", json={"name": "replica", "role": "replica"}).json()["token"]
        base = {"control_plane_url": control_url, "sync_wait_s": 2, "sync_retry_s": 0.2}

        anonymous = settings.model_copy(update={**base, "home": tmp_path / "anonymous", "token": None})
        with run_uvicorn_in_thread(create_inference_app(anonymous)) as replica_url:
            failed = wait_for(lambda: _iris_status(replica_url))
            assert failed["state"] == "failed"
            assert "401" in failed["error"] and "token" in failed["error"], failed
            assert httpx.post(f"{replica_url}/serve/iris/1", json={"x0": 1, "x1": 2}).status_code == 503
            assert api.http.get("/api/services/default/status").json()["replicas"] == []

        with_token = settings.model_copy(update={**base, "home": tmp_path / "replica", "token": replica})
        with run_uvicorn_in_thread(create_inference_app(with_token)) as replica_url:
            assert wait_for(lambda: _answer(replica_url)) == "ok"

            def reported_ready() -> bool:
                replicas = api.http.get("/api/services/default/status").json()["replicas"]
                return bool(replicas) and replicas[0]["endpoints"][0]["state"] == "ready"

            wait_for(reported_ready)  # the report sent while loading may come first
    app.state.db.dispose()
