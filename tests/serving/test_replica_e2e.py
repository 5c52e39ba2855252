"""A standalone inference replica: follows its own service only, survives a control plane outage."""

from __future__ import annotations

from pathlib import Path

import httpx

from modelyard.control.api import create_control_app
from modelyard.server import create_inference_app
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for


def replica_settings(settings: Settings, control_url: str, service: str, tmp_path: Path) -> Settings:
    token = settings.token_file().read_text().strip()
    return settings.model_copy(
        update={
            "home": tmp_path / f"replica-{service}",
            "service": service,
            "control_plane_url": control_url,
            "token": token,
            "sync_wait_s": 2,
            "sync_retry_s": 0.2,
        }
    )


def add_iris(api: Api, tmp_path: Path, service: str, tag: str) -> None:
    train_sklearn(tmp_path / f"{service}.pkl")
    api.endpoint(
        service=service,
        endpoint="iris",
        version="1",
        engine="sklearn",
        model_id=api.model(tmp_path / f"{service}.pkl", f"iris-{service}"),
        preprocess=api.code(PREPROCESS_XY.replace("TAG", tag)),
    )


def answer(url: str) -> str | None:
    try:
        response = httpx.post(f"{url}/serve/iris/1", json={"x0": 1, "x1": 2}, timeout=5)
    except httpx.HTTPError:
        return None
    return str(response.json()["code"]) if response.status_code == 200 else None


def test_services_are_separate_and_replicas_survive_control_plane_outage(
    settings: Settings, tmp_path: Path
) -> None:
    control_port = free_port()
    control_url = f"http://127.0.0.1:{control_port}"
    with run_uvicorn_in_thread(create_control_app(settings), control_port):
        api = Api(control_url, settings.token_file().read_text().strip())
        assert api.http.post("/api/services", json={"name": "blue"}).status_code == 201
        add_iris(api, tmp_path, "default", "from-default")
        add_iris(api, tmp_path, "blue", "from-blue")
        blue = replica_settings(settings, control_url, "blue", tmp_path)
        with run_uvicorn_in_thread(create_inference_app(blue)) as replica_url:
            assert wait_for(lambda: answer(replica_url)) == "from-blue"
            status = httpx.get(f"{replica_url}/status").json()
            assert status["service"] == "blue"
            assert [e["key"] for e in status["endpoints"]] == ["iris/1"]
            # the control plane sees the replica's report
            reported = wait_for(
                lambda: api.http.get("/api/services/blue/status").json().get("replicas"), timeout=5
            )
            assert reported[0]["endpoints"][0]["state"] == "ready"
    # the control plane is down now: the running replica is gone with its server, so start a
    # fresh replica with the same home: it serves its last-known configuration
    with run_uvicorn_in_thread(create_inference_app(blue)) as replica_url:
        assert wait_for(lambda: answer(replica_url)) == "from-blue"
        assert httpx.get(f"{replica_url}/health/ready").status_code == 200
        assert httpx.get(f"{replica_url}/status").json()["control_plane_connected"] is False
        # control plane comes back on the same port: the replica resyncs and picks up changes
        with run_uvicorn_in_thread(create_control_app(settings), control_port):
            add_iris(api, tmp_path, "blue", "after-restart")
            assert wait_for(lambda: answer(replica_url) == "after-restart" or None, timeout=10)


def test_running_replica_keeps_serving_while_control_plane_is_down(
    settings: Settings, tmp_path: Path
) -> None:
    control_port = free_port()
    control_url = f"http://127.0.0.1:{control_port}"
    blue = None
    with run_uvicorn_in_thread(create_control_app(settings), control_port):
        api = Api(control_url, settings.token_file().read_text().strip())
        add_iris(api, tmp_path, "default", "live")
        blue = replica_settings(settings, control_url, "default", tmp_path)
        replica = run_uvicorn_in_thread(create_inference_app(blue))
        replica_url = replica.__enter__()
        assert wait_for(lambda: answer(replica_url)) == "live"
    try:
        for _ in range(20):  # the control plane is stopped; every request still succeeds
            assert answer(replica_url) == "live"
        wait_for(lambda: httpx.get(f"{replica_url}/status").json()["control_plane_connected"] is False)
        assert answer(replica_url) == "live"
    finally:
        replica.__exit__(None, None, None)


def test_replica_drops_cached_artifacts_no_configuration_needs(settings: Settings, tmp_path: Path) -> None:
    control_port = free_port()
    control_url = f"http://127.0.0.1:{control_port}"
    with run_uvicorn_in_thread(create_control_app(settings), control_port):
        api = Api(control_url, settings.token_file().read_text().strip())
        add_iris(api, tmp_path, "default", "first")
        replica = replica_settings(settings, control_url, "default", tmp_path)
        replica = replica.model_copy(update={"cache_keep_s": 0})
        blobs = replica.resolved_cache_dir() / "blobs"
        with run_uvicorn_in_thread(create_inference_app(replica)) as replica_url:
            assert wait_for(lambda: answer(replica_url)) == "first"
            first = {p.name for p in blobs.iterdir()}
            assert len(first) == 2  # the model and its preprocess code
            add_iris(api, tmp_path, "default", "second")  # new code (the model trains the same bytes)
            assert wait_for(lambda: answer(replica_url) == "second" or None, timeout=10)
            # the old code goes once the new revision is saved; the model both use stays
            now = wait_for(
                lambda: len(names := {p.name for p in blobs.iterdir()}) == 2 and names != first and names
            )
            assert len(now & first) == 1
            assert answer(replica_url) == "second"
