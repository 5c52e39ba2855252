"""A real Prometheus (Debian's package) scraping a real modelyard server under load.

Prometheus runs the committed ``deploy/prometheus/prometheus.yml`` (only its targets and the
scrape interval substituted) with the committed ``alerts.yml`` next to it, as compose mounts
them, so a broken committed file fails here. Checks through the Prometheus HTTP API that both
committed targets (replica and control plane) are up, that the request rate and latency
quantiles of an endpoint are sane, that a batched endpoint records its stages, that shadow
traffic is recorded, that the alert rules load, and that every PromQL expression of the
Grafana dashboard parses and returns data. ``promtool`` checks the committed files too.
"""

from __future__ import annotations

import json
import re
import shutil
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
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"

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


class Stack:
    """An all-in-one server (the replica target) and its control plane app on a port of its own."""

    def __init__(self, url: str, control_url: str, api: Api) -> None:
        self.url, self.control_url, self.api = url, control_url, api

    def targets(self) -> dict[str, str]:
        """Committed target host names -> where that process listens in this test."""
        return {
            "inference": self.url.removeprefix("http://"),
            # compose's second replica: the same process here (Prometheus keeps one of two equal targets)
            "inference-2": self.url.removeprefix("http://"),
            "control-plane": self.control_url.removeprefix("http://"),
        }


@pytest.fixture
def modelyard(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    settings = settings.model_copy(update={"sync_wait_s": 5})
    app = create_all_in_one_app(settings)
    with (
        run_uvicorn_in_thread(app) as url,
        run_uvicorn_in_thread(app.control, lifespan="off") as control_url,  # `modelyard control-plane`
    ):
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
        versions = (
            ("iris", "1", {}),
            ("iris", "2", {"max_batch_size": 8, "max_batch_delay_ms": 3}),
            ("iris_next", "1", {}),
        )
        for name, version, options in versions:
            train_sklearn(tmp_path / f"{name}-{version}.pkl")
            api.endpoint(
                endpoint=name,
                version=version,
                engine="sklearn",
                model_id=api.model(tmp_path / f"{name}-{version}.pkl", name),
                preprocess=api.code(PREPROCESS_XY),
                options=options,
            )
            wait_for(
                lambda k=f"{name}/{version}": (
                    httpx.post(f"{url}/serve/{k}", json={"x0": 1, "x1": 2}).status_code == 200
                )
            )
        canary = {"endpoint": "iris_ab", "weights": [1], "targets": ["iris/2"], "shadow": ["iris_next/1"]}
        api.http.post("/api/services/default/canaries", json=canary).raise_for_status()
        wait_for(lambda: httpx.post(f"{url}/serve/iris_ab", json={"x0": 1, "x1": 2}).status_code == 200)
        broken = tmp_path / "broken.pkl"
        broken.write_bytes(b"not a pickle")  # fails to load: state failed, a load failure counted
        api.endpoint(endpoint="broken", version="1", engine="sklearn", model_id=api.model(broken, "broken"))
        wait_for(lambda: httpx.post(f"{url}/serve/broken/1", json={}).status_code == 503)
        yield Stack(url, control_url, api)


def derive_config(tmp: Path, targets: dict[str, str]) -> Path:
    """The committed prometheus.yml with ``targets`` substituted, its rule files beside it."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config.setdefault("global", {}).update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    assert config.get("rule_files"), "deploy/prometheus/prometheus.yml loads no alert rules"
    for rule_file in config["rule_files"]:  # relative to the config file, as compose mounts them
        assert not Path(rule_file).is_absolute(), rule_file
        shutil.copy(PROMETHEUS_DIR / rule_file, tmp / rule_file)
    jobs = config["scrape_configs"]
    assert jobs, "no scrape job"
    for job in jobs:
        for static in job.get("static_configs", []):
            unknown = [t for t in static["targets"] if t.split(":")[0] not in targets]
            assert not unknown, f"committed targets this test does not know how to run: {unknown}"
            static["targets"] = [targets[t.split(":")[0]] for t in static["targets"]]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(modelyard: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    binary = ensure_debian_package("prometheus", "prometheus")
    config = derive_config(tmp_path, modelyard.targets())
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
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


def test_committed_prometheus_files_pass_promtool() -> None:
    promtool = ensure_debian_package("promtool", "prometheus")
    for command in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"
    assert "3 rules found" in result.stdout, result.stdout


def test_prometheus_sees_sane_rates_and_quantiles_and_dashboard_queries_return_data(
    modelyard: Stack, prometheus: Prometheus
) -> None:
    url = modelyard.url

    def request(i: int) -> tuple[str, dict[str, object]]:
        if i % 25 == 0:
            return "/serve/iris/1", {"x0": "not a number", "x1": 1}  # a few 422s for the error panels
        if i % 5 == 3:
            return "/serve/iris_ab", {"x0": i % 5, "x1": 2}  # iris/2 answers, iris_next/1 shadows
        return f"/serve/iris/{1 if i % 2 else 2}", {"x0": i % 5, "x1": 2}

    with Load(url, request, threads=4) as load:
        wait_for(lambda: prometheus.query('count(up{job="modelyard"} == 1) == 2'), timeout=30, interval=0.5)
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
        # the batched version records every stage once per answered request, like unbatched ones
        answered = f'sum(rate(modelyard_requests_total{{endpoint="iris",version="2",code="200"}}[{WINDOW}]))'
        for stage in ("queue", "preprocess", "process", "postprocess"):
            ratio = prometheus.scalar(
                f"sum(rate(modelyard_stage_duration_seconds_count"
                f'{{endpoint="iris",version="2",stage="{stage}"}}[{WINDOW}])) / {answered}'
            )
            assert 0.8 < ratio < 1.2, (stage, ratio)
        # shadow copies: recorded by canary, target and code, never answered to the client
        shadowed = prometheus.scalar(
            "sum(rate(modelyard_shadow_requests_total"
            f'{{canary="iris_ab",target="iris_next/1",code="200"}}[{WINDOW}]))'
        )
        assert 0.5 * load.rate("/serve/iris_ab", 8.0) < shadowed < 1.5 * load.rate("/serve/iris_ab", 8.0)
        assert all(p != "/serve/iris_next/1" for _, p, _, _ in list(load.log))
        # the control plane target of the committed config
        revision = modelyard.api.http.get("/api/services/default").json()["revision"]
        assert prometheus.scalar('modelyard_control_service_revision{service="default"}') == revision
        routes = prometheus.query("sum by (route) (modelyard_control_api_requests_total)")
        assert "/api/services/{service}/config" in {r["metric"]["route"] for r in routes}, routes

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
