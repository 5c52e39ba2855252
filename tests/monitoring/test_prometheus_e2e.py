"""A real Prometheus (Debian's package) scraping a real modelyard server under load.

Checks through the Prometheus HTTP API that the request rate and latency quantiles of an
endpoint are sane, that the alert rules load, and that every PromQL expression of the Grafana
dashboard parses and returns data.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.monitoring.tools import Load, ensure_debian_package
from tests.servers import free_port, run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "modelyard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

pytestmark = pytest.mark.slow

WINDOW = "8s"
TEMPLATE = {
    "$__rate_interval": WINDOW,
    "${service}": ".*",
    "$service": ".*",
    "${scalar}": "modelyard_custom_x0",
    "${counter}": "modelyard_custom_code",
}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])


@pytest.fixture
def modelyard(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Api]]:
    settings = settings.model_copy(update={"sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        api = Api(url, settings.token_file().read_text().strip())
        rule = {
            "endpoint": "iris/*",
            "variables": [
                {"name": "x0", "kind": "scalar", "buckets": [0, 1, 2, 4]},
                {"name": "code", "kind": "enum", "values": ["TAG"]},
                {"name": "x1", "kind": "value"},
            ],
        }
        api.http.post("/api/services/default/metrics", json=rule).raise_for_status()
        for version, options in (("1", {}), ("2", {"max_batch_size": 8, "max_batch_delay_ms": 3})):
            train_sklearn(tmp_path / f"{version}.pkl")
            api.endpoint(
                endpoint="iris",
                version=version,
                engine="sklearn",
                model_id=api.model(tmp_path / f"{version}.pkl", "iris"),
                preprocess=api.code(PREPROCESS_XY),
                options=options,
            )
            wait_for(
                lambda v=version: (
                    httpx.post(f"{url}/serve/iris/{v}", json={"x0": 1, "x1": 2}).status_code == 200
                )
            )
        broken = tmp_path / "broken.pkl"
        broken.write_bytes(b"not a pickle")  # fails to load: state failed, a load failure counted
        api.endpoint(endpoint="broken", version="1", engine="sklearn", model_id=api.model(broken, "broken"))
        wait_for(lambda: httpx.post(f"{url}/serve/broken/1", json={}).status_code == 503)
        yield url, api


@pytest.fixture
def prometheus(modelyard: tuple[str, Api], tmp_path: Path) -> Iterator[Prometheus]:
    binary = ensure_debian_package("prometheus", "prometheus")
    target = modelyard[0].removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "modelyard", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, interval=0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in TEMPLATE.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def test_prometheus_sees_sane_rates_and_quantiles_and_dashboard_queries_return_data(
    modelyard: tuple[str, Api], prometheus: Prometheus
) -> None:
    url, _ = modelyard

    def request(i: int) -> tuple[str, dict[str, object]]:
        if i % 25 == 0:
            return "/serve/iris/1", {"x0": "not a number", "x1": 1}  # a few 422s for the error panels
        return f"/serve/iris/{1 if i % 2 else 2}", {"x0": i % 5, "x1": 2}

    with Load(url, request, threads=4) as load:
        wait_for(lambda: prometheus.query('up{job="modelyard"} == 1'), timeout=30, interval=0.5)
        time.sleep(10)  # a few scrapes under load
        client_rate = load.rate("/serve/iris/1", 8.0)
        rate = prometheus.scalar(
            f'sum(rate(modelyard_requests_total{{endpoint="iris",version="1",code="200"}}[{WINDOW}]))'
        )
        assert client_rate > 5
        assert 0.5 * client_rate < rate < 1.5 * client_rate, (rate, client_rate)
        quantiles = {
            q: prometheus.scalar(
                f"histogram_quantile({q}, sum by (le) "
                f'(rate(modelyard_request_duration_seconds_bucket{{endpoint="iris",version="1"}}[{WINDOW}])))'
            )
            for q in (0.5, 0.99)
        }
        slowest = max(s for _, p, _, s in list(load.log) if p == "/serve/iris/1")
        assert 0 < quantiles[0.5] <= quantiles[0.99] < max(1.0, 2 * slowest), quantiles
        canary_share = prometheus.query(
            f'sum by (version) (rate(modelyard_requests_total{{endpoint="iris",code="200"}}[{WINDOW}]))'
        )
        assert {r["metric"]["version"] for r in canary_share} == {"1", "2"}

        empty = []
        for title, expr in dashboard_exprs():
            if not prometheus.query(expr):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    rules = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(loaded) == {"ModelyardHighErrorRate", "ModelyardHighLatencyP99", "ModelyardEndpointFailed"}
    assert all(r["health"] in ("ok", "unknown") for r in loaded.values()), loaded
    assert re.search(r"modelyard_endpoint_state", loaded["ModelyardEndpointFailed"]["query"])
    failed = prometheus.query(loaded["ModelyardEndpointFailed"]["query"])
    assert [r["metric"]["endpoint"] for r in failed] == ["broken"]  # the alert's condition holds
