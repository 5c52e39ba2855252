"""Canary routing on a real all-in-one server: weights, prefix mode, sticky keys, shadows, removed targets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.monitoring.tools import samples, value
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, status_of, train_sklearn, wait_for

S = "/api/services/default"

FAILING = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        raise ValueError("shadow blew up")
"""

SLOW = """
import time

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        time.sleep(0.3)
        return [[body["x0"], body["x1"]]]
"""

BURN = """
import time

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        deadline, n = time.perf_counter() + 0.2, 0
        while time.perf_counter() < deadline:  # pure Python: holds the GIL, not a sleep
            n += 1
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist(), "verdict": "burned"}
"""


class Server:
    def __init__(self, url: str, api: Api, tmp: Path) -> None:
        self.url = url
        self.api = api
        self.tmp = tmp
        self.http = httpx.Client(base_url=url, timeout=30)
        self.model = ""

    def version(self, version: str, code: str | None = None, name: str = "iris") -> None:
        if not self.model:
            train_sklearn(self.tmp / "m.pkl")
            self.model = self.api.model(self.tmp / "m.pkl", "iris")
        self.api.endpoint(
            endpoint=name,
            version=version,
            engine="sklearn",
            model_id=self.model,
            preprocess=self.api.code(code or PREPROCESS_XY.replace("TAG", f"{name}/{version}")),
        )
        wait_for(lambda: (status_of(self.url, f"{name}/{version}") or {}).get("state") == "ready")

    def canary(self, **body: Any) -> dict[str, Any]:
        r = self.api.http.post(f"{S}/canaries", json=body)
        assert r.status_code in (200, 201), r.text
        revision = self.api.http.get(S).json()["revision"]
        wait_for(lambda: self.http.get("/status").json()["revision"] >= revision)
        return dict(r.json())

    def answers(self, path: str, n: int, **kwargs: Any) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            r = self.http.post(path, **{"json": BODY, **kwargs})
            assert r.status_code == 200, r.text
            assert r.json()["code"] == r.headers["x-modelyard-endpoint"]  # the header names who answered
            seen[r.headers["x-modelyard-endpoint"]] += 1
        return seen

    def metrics(self) -> dict[str, float]:
        response = self.http.get("/metrics")
        assert response.status_code == 200
        return samples(response.text)

    def canary_status(self, name: str) -> dict[str, Any]:
        for entry in self.http.get("/status").json()["canaries"]:
            if entry["endpoint"] == name:
                return dict(entry)
        raise AssertionError(f"canary {name} not in /status")


BODY = {"x0": 1, "x1": 2}


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    app = create_all_in_one_app(settings.model_copy(update={"sync_wait_s": 5}))
    with run_uvicorn_in_thread(app) as url:
        yield Server(url, Api(url, settings.token_file().read_text().strip()), tmp_path)


def test_weights_split_the_traffic_and_the_header_names_the_version(server: Server) -> None:
    server.version("1")
    server.version("2")
    server.canary(endpoint="iris_canary", weights=[0.2, 0.8], targets=["iris/1", "iris/2"])
    wait_for(lambda: server.http.post("/serve/iris_canary", json=BODY).status_code == 200)
    seen = server.answers("/serve/iris_canary", 400)
    assert set(seen) == {"iris/1", "iris/2"}
    assert 0.12 < seen["iris/1"] / 400 < 0.28, seen
    # new weights take effect without touching the endpoints
    server.canary(endpoint="iris_canary", weights=[0, 1], targets=["iris/1", "iris/2"])
    wait_for(lambda: server.answers("/serve/iris_canary", 30) == Counter({"iris/2": 30}))


def test_prefix_mode_follows_new_versions_without_a_command(server: Server) -> None:
    server.version("1")
    server.version("2")
    server.canary(endpoint="ab", weights=[0.1, 0.9], prefix="iris")
    wait_for(lambda: server.http.post("/serve/ab", json=BODY).status_code == 200)
    seen = server.answers("/serve/ab", 300)
    assert set(seen) == {"iris/1", "iris/2"} and seen["iris/2"] < seen["iris/1"], seen  # newest gets 10%
    server.version("10")  # numeric order: 10 is newer than 2
    wait_for(lambda: server.canary_status("ab")["shares"].get("iris/10") == 0.1)
    seen = server.answers("/serve/ab", 300)
    assert set(seen) == {"iris/10", "iris/2"} and seen["iris/10"] < seen["iris/2"], seen


def test_sticky_keys_always_land_on_the_same_target(server: Server) -> None:
    server.version("1")
    server.version("2")
    server.canary(
        endpoint="by_header", weights=[1, 1], targets=["iris/1", "iris/2"], sticky_key="header:X-User-Id"
    )
    server.canary(endpoint="by_body", weights=[1, 1], targets=["iris/1", "iris/2"], sticky_key="body:user_id")
    wait_for(lambda: server.http.post("/serve/by_body", json=BODY).status_code == 200)
    targets: Counter[str] = Counter()
    for user in range(40):
        seen = server.answers("/serve/by_header", 5, headers={"x-user-id": f"user-{user}"})
        assert len(seen) == 1, (user, seen)
        targets.update(seen)
        body = {**BODY, "user_id": user}
        seen = Counter(
            server.http.post("/serve/by_body", json=body).headers["x-modelyard-endpoint"] for _ in range(5)
        )
        assert len(seen) == 1, (user, seen)
    assert set(targets) == {"iris/1", "iris/2"}  # users spread over both


def test_shadow_copies_never_fail_or_slow_the_primary(server: Server) -> None:
    # the shadow's answers are recorded in metrics: a rule on the CPU-burning shadow's answer field
    rule = {"endpoint": "iris/5", "variables": [{"name": "verdict", "kind": "enum", "values": ["burned"]}]}
    server.api.http.post(f"{S}/metrics", json=rule).raise_for_status()
    server.version("1")
    server.version("3", code=FAILING)
    server.version("4", code=SLOW)
    server.version("5", code=BURN)
    broken = server.tmp / "broken.pkl"
    broken.write_bytes(b"not a pickle")  # iris/6 fails to load: copies to it are dropped
    server.api.endpoint(
        endpoint="iris", version="6", engine="sklearn", model_id=server.api.model(broken, "b")
    )
    wait_for(lambda: (status_of(server.url, "iris/6") or {}).get("state") == "failed")
    shadows = ["iris/3", "iris/4", "iris/5", "iris/6"]
    server.canary(endpoint="c", weights=[1], targets=["iris/1"], shadow=shadows)
    wait_for(lambda: server.http.post("/serve/c", json=BODY).status_code == 200)

    def settled() -> bool:  # every copy sent so far answered (each request drops one to iris/6)
        counts = server.canary_status("c")["shadow"]
        sent = counts["iris/6"]["dropped"]
        return all(counts[t]["ok"] + counts[t]["failed"] == sent for t in shadows[:3])

    wait_for(settled, timeout=30)
    before = server.metrics()
    started = time.monotonic()
    seen = server.answers("/serve/c", 20)  # every answer 200 from iris/1 (asserted inside)
    assert seen == Counter({"iris/1": 20})
    assert time.monotonic() - started < 20 * 0.2 / 2  # neither the 0.3 s sleep nor the 0.2 s burn waited for

    def delta(name: str, **labels: str) -> float:
        return value(server.metrics(), name, canary="c", **labels) - value(before, name, canary="c", **labels)

    wait_for(lambda: delta("modelyard_shadow_requests_total", target="iris/4") >= 20, timeout=30)
    wait_for(lambda: delta("modelyard_shadow_requests_total", target="iris/5") >= 20, timeout=30)
    m = server.metrics()
    ep = {"service": "default", "canary": "c"}
    answered = {
        (target, code): value(m, "modelyard_shadow_requests_total", target=target, code=code, **ep)
        - value(before, "modelyard_shadow_requests_total", target=target, code=code, **ep)
        for target in shadows
        for code in ("200", "422")
    }
    assert answered == {
        ("iris/3", "200"): 0,
        ("iris/3", "422"): 20,  # the failing shadow's answers: recorded, never returned
        ("iris/4", "200"): 20,
        ("iris/4", "422"): 0,
        ("iris/5", "200"): 20,
        ("iris/5", "422"): 0,
        ("iris/6", "200"): 0,
        ("iris/6", "422"): 0,
    }
    assert delta("modelyard_shadow_dropped_total", target="iris/6") == 20  # not serving: dropped
    for target in ("iris/3", "iris/4", "iris/5"):
        assert value(m, "modelyard_shadow_dropped_total", target=target) == 0
    slow_count = value(m, "modelyard_shadow_duration_seconds_count", target="iris/4")
    assert slow_count == value(m, "modelyard_shadow_duration_seconds_bucket", target="iris/4", le="+Inf")
    assert value(m, "modelyard_shadow_duration_seconds_sum", target="iris/4") >= 0.3 * slow_count
    assert value(m, "modelyard_shadow_duration_seconds_bucket", target="iris/4", le="0.25") == 0
    # the burning shadow's answer field, counted by the metric rule on iris/5
    verdicts = value(m, "modelyard_custom_verdict_total", endpoint="iris", version="5", value="burned")
    assert verdicts == value(m, "modelyard_shadow_requests_total", target="iris/5", code="200")
    status = server.canary_status("c")["shadow"]
    assert status["iris/3"]["failed"] >= 20 and status["iris/3"]["ok"] == 0
    assert status["iris/6"]["dropped"] >= 20


def test_a_removed_target_gives_its_share_away_and_status_says_so(server: Server) -> None:
    server.version("1")
    server.version("2")
    server.canary(endpoint="c", weights=[0.5, 0.5], targets=["iris/1", "iris/2"])
    wait_for(lambda: len(server.answers("/serve/c", 20)) == 2)
    server.api.remove("iris/2")
    wait_for(lambda: server.canary_status("c")["missing"] == ["iris/2"])
    assert server.answers("/serve/c", 30) == Counter({"iris/1": 30})
    status = server.canary_status("c")
    assert status["shares"] == {"iris/1": 1.0} and "iris/2" in status["note"]
    listed = server.api.http.get(f"{S}/canaries/c").json()
    assert listed["missing"] == ["iris/2"]
    server.api.remove("iris/1")  # nothing left: a clear 503, not a crash
    wait_for(lambda: server.http.post("/serve/c", json=BODY).status_code == 503)
    assert "none of its targets" in server.http.post("/serve/c", json=BODY).json()["error"]


def test_canaries_chain_and_user_code_can_call_a_canary(server: Server) -> None:
    server.version("1")
    server.version("2")
    server.canary(endpoint="inner", weights=[1, 0], targets=["iris/1", "iris/2"])
    server.canary(endpoint="outer", weights=[1], targets=["inner"])
    wait_for(lambda: server.http.post("/serve/outer", json=BODY).status_code == 200)
    assert server.answers("/serve/outer", 10) == Counter({"iris/1": 10})
