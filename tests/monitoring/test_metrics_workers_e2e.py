"""``modelyard serve --workers 2`` as a real process: one scrape sees the sum over both workers.

Also drives ``modelyard metrics add/list/remove`` through the console script.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.metrics import FLUSH_INTERVAL_S
from tests.monitoring.tools import MODELYARD, answers, samples, serve_workers, value
from tests.servers import free_port, stop_process_group
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

pytestmark = pytest.mark.slow


class Running:
    def __init__(self, url: str, home: Path, env: dict[str, str]) -> None:
        self.url, self.home, self.env = url, home, env

    def cli(self, *args: str) -> str:
        result = subprocess.run([MODELYARD, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/metrics", timeout=10)  # a new connection: any worker
        assert response.status_code == 200, response.text
        return samples(response.text)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("home")
    with serve_workers(home, MODELYARD_STATS_INTERVAL_S="0.5") as (url, env):
        yield Running(url, home, env)


def test_one_scrape_sees_the_sum_over_workers(running: Running, tmp_path: Path) -> None:
    api = Api(running.url, (running.home / "token").read_text().strip())
    train_sklearn(tmp_path / "m.pkl")
    out = running.cli(
        "metrics", "add", "--endpoint", "iris/*", "--log-freq", "1",
        "--variable-scalar", "x0=0,1,2", "--variable-enum", "code=TAG,other", "--variable-value", "x1",
    )  # fmt: skip
    assert "iris/*" in out and "x0 (scalar: 0,1,2)" in out
    assert "iris/*" in running.cli("metrics", "list")
    api.endpoint(
        endpoint="iris",
        version="1",
        engine="sklearn",
        model_id=api.model(tmp_path / "m.pkl", "iris"),
        preprocess=api.code(PREPROCESS_XY),
    )
    # both workers sync on their own: wait until 20 fresh connections in a row are served
    wait_for(
        lambda: all(
            httpx.post(f"{running.url}/serve/iris/1", json={"x0": 1, "x1": 2}).status_code == 200
            for _ in range(20)
        ),
        timeout=60,
        interval=0.2,
    )
    replicas = {httpx.get(f"{running.url}/status").json()["replica"] for _ in range(40)}
    assert len(replicas) == 2, replicas  # two processes answer

    # a worker moves its buffered request metrics into the shared files every FLUSH_INTERVAL_S
    # (its own scrapes flush at once): past that, any worker's scrape sees every worker's requests
    time.sleep(3 * FLUSH_INTERVAL_S)
    before = value(running.metrics(), "modelyard_requests_total", endpoint="iris", code="200")
    custom_before = value(running.metrics(), "modelyard_custom_x0_count", endpoint="iris")
    sent = 150
    for i in range(sent):
        response = httpx.post(f"{running.url}/serve/iris/1", json={"x0": i % 3, "x1": 2})
        assert response.status_code == 200
    time.sleep(3 * FLUSH_INTERVAL_S)
    scrapes = [running.metrics() for _ in range(8)]  # new connections, answered by either worker
    totals = {value(m, "modelyard_requests_total", endpoint="iris", code="200") for m in scrapes}
    assert totals == {before + sent}, totals
    m = scrapes[-1]
    assert value(m, "modelyard_custom_x0_count", endpoint="iris") - custom_before == sent
    assert value(m, "modelyard_custom_code_total", endpoint="iris", value="TAG") >= sent
    assert value(m, "modelyard_request_duration_seconds_bucket", endpoint="iris", le="+Inf") >= before + sent
    assert value(m, "modelyard_inflight_requests", endpoint="iris") == 0
    # each worker has iris/1 ready: the state gauge sums over live workers
    assert value(m, "modelyard_endpoint_state", endpoint="iris", version="1", state="ready") == 2
    pids = {k.split('pid="')[1].split('"')[0] for k in m if k.startswith("process_resident_memory_bytes")}
    assert len(pids) == 2, pids

    # the dashboard's live view sums the workers' reports too
    def live_rate() -> float:
        for _ in range(20):
            httpx.post(f"{running.url}/serve/iris/1", json={"x0": 1, "x1": 2})
        live = httpx.get(f"{running.url}/api/services/default/live").json()
        return float(live["endpoints"].get("iris/1", {}).get("rate", 0)) if live["replicas"] == 2 else 0.0

    assert wait_for(live_rate, timeout=20, interval=0.1) > 0

    running.cli("metrics", "remove", "--endpoint", "iris/*")
    assert "no metric rules" in running.cli("metrics", "list")


def test_bad_metric_rule_from_the_cli_is_refused(running: Running) -> None:
    result = subprocess.run(
        [MODELYARD, "metrics", "add", "--endpoint", "iris/1", "--variable-scalar", "x0=2,1"],
        env=running.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "strictly increasing" in result.stderr
    result = subprocess.run(
        [MODELYARD, "metrics", "add", "--endpoint", "iris/1", "--log-freq", "2", "--variable-value", "z"],
        env=running.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "between 0 and 1" in result.stderr
    assert "no metric rules" in running.cli("metrics", "list")  # nothing was stored


def test_control_plane_with_two_workers_sums_its_api_counts(tmp_path: Path) -> None:
    """``modelyard control-plane --workers 2``: the committed scrape target, summed over workers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "control.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [MODELYARD, "control-plane", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: answers(f"{url}/api/health"), timeout=60, interval=0.2)
        route = {"method": "GET", "route": "/api/services/{name}", "code": "200"}

        def scrape() -> dict[str, float]:
            response = httpx.get(f"{url}/metrics", timeout=10)  # a new connection: any worker
            assert response.status_code == 200, response.text
            return samples(response.text)

        before = value(scrape(), "modelyard_control_api_requests_total", **route)
        sent = 40
        for _ in range(sent):  # new connections, so both workers answer some
            assert httpx.get(f"{url}/api/services/default").status_code == 200
        scrapes = [scrape() for _ in range(8)]
        totals = {value(m, "modelyard_control_api_requests_total", **route) for m in scrapes}
        assert totals == {before + sent}, totals
        revision = httpx.get(f"{url}/api/services/default").json()["revision"]
        assert {value(m, "modelyard_control_service_revision", service="default") for m in scrapes} == {
            revision
        }
        m = scrapes[-1]
        pids = {k.split('pid="')[1].split('"')[0] for k in m if k.startswith("process_resident_memory_bytes")}
        assert len(pids) == 2, pids
    finally:
        stop_process_group(proc, 20)
        log.close()
