"""``Settings.replica_token``: the token the rendered replicas present, registered by the control plane.

``k8s render`` gives the control plane ``MODELYARD_REPLICA_TOKEN`` and every replica and queue
worker ``MODELYARD_TOKEN`` from one Secret; the control plane must then accept it for what
replicas call (reports, statistics, artifacts) and refuse it for anything that changes state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modelyard.control.api import create_control_app
from modelyard.control.tokens import REPLICA_TOKEN_NAME, TokenStore, hash_token
from modelyard.errors import BadRequest
from modelyard.settings import Settings
from modelyard.store import Database, upgrade
from tests.servers import run_uvicorn_in_thread

TOKEN = "replica-token-0123456789abcdef"


@contextmanager
def control(settings: Settings) -> Iterator[httpx.Client]:
    app = create_control_app(settings)
    try:
        with run_uvicorn_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        app.state.db.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_replica_token_from_settings_is_a_replica_token(settings: Settings, database_url: str) -> None:
    configured = settings.model_copy(update={"database_url": database_url, "replica_token": TOKEN})
    with control(configured) as client:
        admin = bearer(settings.token_file().read_text().strip())
        replica = bearer(TOKEN)
        sha = client.post("/api/artifacts", content=b"model bytes", headers=admin).json()["sha256"]
        report = {"revision": 1, "endpoints": [{"key": "iris/a", "state": "ready", "engine": "sklearn"}]}
        assert (
            client.put("/api/services/default/replicas/pod-1", json=report, headers=replica).status_code
            == 204
        )
        stats = {"time": 1.0, "endpoints": {}}
        assert (
            client.put("/api/services/default/replicas/pod-1/stats", json=stats, headers=replica).status_code
            == 204
        )
        assert client.get(f"/api/artifacts/{sha}", headers=replica).content == b"model bytes"
        # anything that changes state: 403, naming the reason
        for response in (
            client.post("/api/services", json={"name": "other"}, headers=replica),
            client.post("/api/tokens", json={"name": "mine", "role": "admin"}, headers=replica),
            client.post("/api/artifacts", content=b"x", headers=replica),
            client.delete(f"/api/tokens/{REPLICA_TOKEN_NAME}", headers=replica),
        ):
            assert response.status_code == 403, response.text
            assert "admin token" in response.json()["error"]
        tokens = {t["name"]: t["role"] for t in client.get("/api/tokens", headers=admin).json()}
        assert tokens[REPLICA_TOKEN_NAME] == "replica"
        assert [r["id"] for r in client.get("/api/services/default/status").json()["replicas"]] == ["pod-1"]

    with control(configured) as client:  # a restart registers nothing new
        names = [t["name"] for t in client.get("/api/tokens", headers=admin).json()]
        assert names.count(REPLICA_TOKEN_NAME) == 1 and len(names) == 2

    rotated = configured.model_copy(update={"replica_token": TOKEN + "-new"})
    with control(rotated) as client:  # a changed Secret replaces the token: the old one stops working
        report = {"revision": 1, "endpoints": []}
        put = "/api/services/default/replicas/pod-2"
        assert client.put(put, json=report, headers=bearer(TOKEN)).status_code == 403
        assert client.put(put, json=report, headers=bearer(TOKEN + "-new")).status_code == 204
        names = [t["name"] for t in client.get("/api/tokens", headers=admin).json()]
        assert sorted(names) == ["admin", REPLICA_TOKEN_NAME]


def test_without_the_setting_no_replica_token_exists(settings: Settings, tmp_path: Path) -> None:
    app = create_control_app(settings)
    try:
        assert [t.name for t in app.state.plane.list_tokens()] == ["admin"]
    finally:
        app.state.db.dispose()


def test_register_is_role_aware_and_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'tokens.db'}")
    upgrade(db)
    store = TokenStore(db)
    try:
        assert store.register("r1", "reader", "replicas") == "reader"
        assert store.register("r1", "reader", "replicas") == "reader"  # again: same row
        assert store.verify("r1") == "reader"
        store.register_admin("a1")
        assert store.register("a1", "reader", "replicas", replace=True) == "admin"  # never lowered
        assert store.verify("a1") == "admin" and store.verify("r1") == "reader"
        assert store.register("r1", "admin", "x") == "admin"  # raised when asked
        assert store.register("r2", "reader", "replicas") == "reader"  # name taken: replicas-2
        assert {t.name for t in store.list()} == {"admin", "replicas", "replicas-2"}
        assert store.register("r3", "reader", "replicas", replace=True) == "reader"
        assert store.verify("r1") is None and store.verify("r3") == "reader"  # replaced in place
        with db.read() as session:
            from sqlalchemy import select

            from modelyard.store import TokenRow

            row = session.scalar(select(TokenRow).where(TokenRow.name == "replicas"))
            assert row is not None and row.sha256 == hash_token("r3") and row.role == "reader"
        with pytest.raises(BadRequest, match="role 'owner'"):
            store.register("r4", "owner", "x")  # type: ignore[arg-type]
        with pytest.raises(BadRequest, match="empty token"):
            store.register("", "reader", "x")
    finally:
        db.dispose()
