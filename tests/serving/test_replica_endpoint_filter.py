"""A replica that loads only its own predictor (``MODELYARD_ENDPOINTS``), as ``k8s render`` runs it.

A real control plane (with the replicas' token from ``Settings.replica_token``, as on
Kubernetes) and a real replica over HTTP; the replica's filter and the paths it is asked
come from the rendered manifests, so the HTTPRoute's rules are checked against what the
pods behind them really answer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app as cli
from modelyard.control.api import create_control_app
from modelyard.deploy import k8s
from modelyard.deploy.spec import parse_text
from modelyard.server import create_inference_app
from modelyard.settings import Settings
from tests.deploy.k8s_checks import by_kind, env_of, route_paths
from tests.servers import free_port, run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

REPLICA_TOKEN = "replica-secret-for-tests-0123456789"

SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: iris, service: default}
spec:
  framework: sklearn
  predictors:
    - {name: a, model: {id: x}, trafficWeight: 90}
    - {name: b, model: {id: x}, trafficWeight: 10, resources: {gpu: 1}}
"""

pytestmark = pytest.mark.slow


def _setup(api: Api, tmp_path: Path) -> None:
    train_sklearn(tmp_path / "m.pkl")
    model = api.model(tmp_path / "m.pkl", "iris")
    for version in ("a", "b"):
        api.endpoint(
            endpoint="iris",
            version=version,
            engine="sklearn",
            model_id=model,
            preprocess=api.code(PREPROCESS_XY.replace("TAG", f"from-{version}")),
        )
    for canary in (
        {"endpoint": "iris", "targets": ["iris/a", "iris/b"], "weights": [90, 10]},
        {"endpoint": "only_b", "targets": ["iris/b"], "weights": [1]},
    ):
        response = api.http.post("/api/services/default/canaries", json=canary)
        assert response.status_code == 201, response.text


def _code(url: str, path: str) -> Any:
    response = httpx.post(f"{url}{path}", json={"x0": 1, "x1": 2}, timeout=10)
    return response.json()["code"] if response.status_code == 200 else response.status_code


def test_a_filtered_replica_serves_only_its_predictor(settings: Settings, tmp_path: Path) -> None:
    docs = k8s.render(parse_text(SPEC))
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    a = deployments["modelyard-default-iris-a"]
    (route,) = by_kind(docs, "HTTPRoute")
    control_settings = settings.model_copy(update={"replica_token": REPLICA_TOKEN})
    with run_uvicorn_in_thread(create_control_app(control_settings)) as control_url:
        api = Api(control_url, settings.token_file().read_text().strip())
        _setup(api, tmp_path)
        replica = settings.model_copy(
            update={
                "home": tmp_path / "replica-a",
                "control_plane_url": control_url,
                "token": REPLICA_TOKEN,  # what the pod reads from the modelyard-replica-token Secret
                "endpoints": Settings(endpoints=env_of(a)["MODELYARD_ENDPOINTS"]["value"]).endpoints,  # type: ignore[call-arg]
                "sync_wait_s": 2,
                "sync_retry_s": 0.2,
            }
        )
        assert replica.endpoints == ["iris/a"]
        with run_uvicorn_in_thread(create_inference_app(replica)) as url:
            assert wait_for(lambda: _code(url, "/serve/iris/a") == "from-a")
            assert httpx.post(f"{url}/serve/iris/b", json={"x0": 1, "x1": 2}).status_code == 404
            # the weighted path: the canary kept only iris/a here, whatever the 90/10
            assert {_code(url, "/serve/iris") for _ in range(20)} == {"from-a"}
            assert _code(url, "/serve/only_b") == 404  # a canary with no target left is gone
            status = httpx.get(f"{url}/status").json()
            assert status["endpoint_filter"] == ["iris/a"]
            assert [e["key"] for e in status["endpoints"]] == ["iris/a"]
            assert [c["endpoint"] for c in status["canaries"]] == ["iris"]
            # every rule of the HTTPRoute that sends traffic to a's Service is answered by a's pod
            a_paths = [
                p
                for p, rule in route_paths(route)
                if rule["backendRefs"][0]["name"] == "modelyard-default-iris-a"
            ]
            assert sorted(a_paths) == [
                "/serve/iris",
                "/serve/iris/a",
                "/v2/models/iris",
                "/v2/models/iris/versions/a",
            ]
            for path in a_paths:
                if path.startswith("/serve/"):
                    assert _code(url, path) == "from-a", path
                else:  # OIP model metadata, at exactly the matched prefix
                    answer = httpx.get(f"{url}{path}")
                    assert answer.status_code == 200 and answer.json()["versions"] == ["a"], (
                        path,
                        answer.text,
                    )
            assert httpx.get(f"{url}/v2/models/iris/versions/b").status_code == 404
            # the control plane took its report (the replica token has the replica role)
            replicas = wait_for(lambda: api.http.get("/api/services/default/status").json()["replicas"])
            assert [e["key"] for e in replicas[0]["endpoints"]] == ["iris/a"]
            # the last-known copy on disk is the whole configuration (another filter needs no control plane)
            cached = (tmp_path / "replica-a" / "cache" / "service-default.json").read_text()
            assert '"version":"b"' in cached.replace(" ", "")


def test_a_refused_report_is_a_warning_once_per_status(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica deployed without a valid token says so, once, instead of vanishing from status."""
    caplog.set_level(logging.INFO, logger="modelyard.sync")
    with run_uvicorn_in_thread(create_control_app(settings)) as control_url:
        api = Api(control_url, settings.token_file().read_text().strip())
        replica = settings.model_copy(
            update={
                "home": tmp_path / "replica-x",  # no token file there
                "control_plane_url": control_url,
                "token": "not-a-token",
                "sync_wait_s": 2,
                "sync_retry_s": 0.2,
            }
        )
        app = create_inference_app(replica)
        with run_uvicorn_in_thread(app):
            sync = app.runtime.sync

            def refusals() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "refused this replica's status report" in r.getMessage()]

            wait_for(refusals)
            for _ in range(3):  # more reports, same answer: no more warnings
                sync._report_wanted.set()
                wait_for(lambda: not sync._report_wanted.is_set(), timeout=5)
            wait_for(lambda: api.http.get("/api/services/default").status_code == 200)
            (record,) = refusals()
            assert record.levelno == logging.WARNING
            assert "403" in record.getMessage() and "MODELYARD_TOKEN" in record.getMessage()
            assert not api.http.get("/api/services/default/status").json()["replicas"]
            # a token that works: reports are accepted, and that is said once too
            created = api.http.post("/api/tokens", json={"name": "r", "role": "replica"}).json()["token"]
            sync.http.headers["authorization"] = f"Bearer {created}"
            sync._report_wanted.set()
            wait_for(lambda: api.http.get("/api/services/default/status").json()["replicas"])
            wait_for(
                lambda: any(
                    "accepts this replica's status reports again" in r.getMessage() for r in caplog.records
                )
            )
            assert len(refusals()) == 1


def test_inference_command_takes_token_and_endpoints_after_the_subcommand(
    settings: Settings, tmp_path: Path
) -> None:
    """``modelyard inference --token T --endpoints iris/a``: what a pod's args could say too."""
    bad = CliRunner().invoke(cli, ["inference", "--endpoints", "iris/a b"])
    assert (
        bad.exit_code == 1 and "error: endpoints: 'iris/a b' is not an endpoint key or pattern" in bad.output
    )
    control_settings = settings.model_copy(update={"replica_token": REPLICA_TOKEN})
    with run_uvicorn_in_thread(create_control_app(control_settings)) as control_url:
        api = Api(control_url, settings.token_file().read_text().strip())
        _setup(api, tmp_path)
        port = free_port()
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("modelyard")),
                "inference",
                "--control-plane",
                control_url,
                "--port",
                str(port),
                "--token",
                REPLICA_TOKEN,
                "--endpoints",
                "iris/a",
            ],
            env={**os.environ, "MODELYARD_HOME": str(tmp_path / "cli-replica")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def code(path: str) -> Any:
                try:
                    return _code(url, path)
                except httpx.HTTPError:
                    return None

            assert wait_for(lambda: code("/serve/iris/a") == "from-a", timeout=60)
            assert code("/serve/iris/b") == 404
            assert httpx.get(f"{url}/status").json()["endpoint_filter"] == ["iris/a"]
            # its reports were accepted: the token given after the subcommand was presented
            replicas = wait_for(lambda: api.http.get("/api/services/default/status").json()["replicas"])
            assert [e["key"] for e in replicas[0]["endpoints"]] == ["iris/a"]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
