"""Admission control, deadlines and bounded waits on a real server (uvicorn, all-in-one app).

A worker admits ``max_inflight`` inference requests (4 here); past it, 503 + Retry-After at
once, while health answers; in-flight counting goes back to 0 after errors, deadlines and
clients that hang up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api, wait_for

pytestmark = pytest.mark.slow

LIMIT = 4

SLEEPS = """
import time

class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        if data.get("fail"):
            raise ValueError("asked to fail")
        time.sleep(float(data.get("sleep", 0)))
        return {"slept": data.get("sleep", 0)}
"""


class Served:
    def __init__(self, url: str, api: Api, app: Any) -> None:
        self.url, self.api, self.app = url, api, app

    def post(self, endpoint: str, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(f"{self.url}/serve/{endpoint}", json=body, timeout=timeout)

    def admission(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/status", timeout=10).json()["admission"])

    def codes(self, endpoint: str) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            s.labels["code"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "modelyard_requests_total" and s.labels.get("endpoint") == endpoint
        }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home: Path = tmp_path_factory.mktemp("overload")
    settings = Settings(home=home, sync_wait_s=5, max_inflight=LIMIT, _env_file=None)  # type: ignore[call-arg]
    app = create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        api = Api(url, settings.token_file().read_text().strip())
        code = api.code(SLEEPS)
        waits = {"inline_max_ms": 0}  # sleeps: never on the event loop, all in parallel in the pool
        api.endpoint(endpoint="slow", engine="custom", preprocess=code, options=waits)
        api.endpoint(
            endpoint="deadline", engine="custom", preprocess=code, options={**waits, "timeout_s": 0.3}
        )
        turns = {**waits, "threads": 1, "max_queue": 1}
        api.endpoint(endpoint="turns", engine="custom", preprocess=code, options=turns)
        for name in ("slow", "deadline", "turns"):
            wait_for(lambda n=name: httpx.post(f"{url}/serve/{n}", json={}).status_code == 200, timeout=30)
        yield Served(url, api, app)


def test_past_the_limit_requests_are_refused_at_once_and_health_still_answers(served: Served) -> None:
    before = served.codes("slow").get("503", 0)
    results: list[tuple[int, float, httpx.Response]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        started = time.perf_counter()
        response = served.post("slow", {"sleep": 3.0})
        with lock:
            results.append((response.status_code, time.perf_counter() - started, response))

    with ThreadPoolExecutor(12) as pool:
        admitted = [pool.submit(call, i) for i in range(LIMIT)]
        wait_for(lambda: served.admission()["inflight"] == LIMIT, timeout=10)
        refused = [pool.submit(call, i) for i in range(6)]
        for future in refused:
            future.result()
        assert served.admission()["inflight"] == LIMIT, "the admitted ones still run"
        started = time.perf_counter()
        live = httpx.get(f"{served.url}/health/live", timeout=5)
        assert live.status_code == 200 and time.perf_counter() - started < 1.0
        assert httpx.get(f"{served.url}/v2/health/live", timeout=5).status_code == 200
        assert httpx.get(f"{served.url}/metrics", timeout=5).status_code == 200
        for future in admitted:
            future.result()
    shed = [(took, r) for status, took, r in results if status == 503]
    assert len(shed) == 6 and sum(1 for status, _, _ in results if status == 200) == LIMIT
    for took, response in shed:
        assert took < 2.0, "refused at once, not after an admitted request's 3 s"
        assert response.headers["retry-after"] == "1"
        assert response.json()["kind"] == "overloaded"
        assert f"max_inflight {LIMIT}" in response.json()["error"]
    assert served.admission()["inflight"] == 0
    assert served.admission()["shed"] >= 6
    assert served.codes("slow")["503"] - before == 6, "shed requests are counted"


def test_in_flight_goes_back_to_zero_after_errors_deadlines_and_hang_ups(served: Served) -> None:
    failed = served.post("slow", {"fail": True})
    assert failed.status_code == 422
    started = time.perf_counter()
    late = served.post("deadline", {"sleep": 2})
    assert late.status_code == 504 and time.perf_counter() - started < 1.5
    assert late.json()["kind"] == "deadline_exceeded" and "0.3 s" in late.json()["error"]
    assert served.codes("deadline")["504"] >= 1, "the metrics count it"
    assert served.admission()["inflight"] == 0
    for _ in range(LIMIT):  # clients that give up and close their connection
        with pytest.raises(httpx.ReadTimeout):
            served.post("slow", {"sleep": 0.6}, timeout=0.1)
    wait_for(lambda: served.admission()["inflight"] == 0, timeout=5)
    assert served.post("slow", {"sleep": 0}).status_code == 200, "nothing leaked: still admits"


def test_calls_that_take_turns_wait_in_a_bounded_queue(served: Served) -> None:
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(served.post, "turns", {"sleep": 1.0})
        time.sleep(0.3)
        waiting = pool.submit(served.post, "turns", {"sleep": 0})
        time.sleep(0.3)
        refused = served.post("turns", {"sleep": 0})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["kind"] == "overloaded" and "max_queue 1" in refused.json()["error"]
        assert running.result().status_code == 200 and waiting.result().status_code == 200
