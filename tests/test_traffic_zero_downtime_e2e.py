"""Zero downtime under change: `modelyard serve --workers 2`, a steady client, and every kind of change.

While a client sends requests at a steady rate (new connection each, so both worker processes
answer), endpoints are added, get a new model and new preprocess code, canary weights change,
models are auto-deployed by publishing and retired by newer ones. Every request must answer
200, from an endpoint version that was live at the time: added before the answer came, and
not removed more than the propagation bound before the request was sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelyard.client import Client
from tests.servers import free_port, stop_process_group
from tests.serving.helpers import PREPROCESS_XY, train_sklearn, wait_for

pytestmark = pytest.mark.slow

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
PROPAGATION_S = 1.0
"""A removed version may still answer requests sent up to this long after the removal returned."""
BODY = {"x0": 1, "x1": 2}
PATHS = ["/serve/iris/1", "/serve/iris/2", "/serve/ab", "/serve/auto_ab"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client]]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_URL": url}
    log = open(home / "serve.log", "w+")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [MODELYARD, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: proc.poll() is None and _up(url), timeout=60, interval=0.2)
        with Client(url=url, token=(home / "token").read_text().strip()) as client:
            yield url, client
    finally:
        stop_process_group(proc, 20)
        log.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Lifetimes:
    """When each endpoint version was added (call started) and removed (call returned)."""

    added: dict[str, float] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)

    def add(self, *keys: str, at: float) -> None:
        for key in keys:
            self.added.setdefault(key, at)

    def live(self, key: str, sent: float, received: float) -> bool:
        if key not in self.added or self.added[key] > received:
            return False
        return key not in self.removed or sent <= self.removed[key] + PROPAGATION_S


@dataclass
class Load:
    url: str
    rate_hz: float = 12.0
    results: list[tuple[str, float, float, int, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        index = 0
        while not self.stop.is_set():
            path = PATHS[index % len(PATHS)]
            index += 1
            sent = time.monotonic()
            try:
                r = httpx.post(f"{self.url}{path}", json=BODY, timeout=10)
                status, key, text = r.status_code, r.headers.get("x-modelyard-endpoint", ""), r.text
            except httpx.HTTPError as exc:
                status, key, text = 0, "", repr(exc)
            self.results.append((path, sent, time.monotonic(), status, key, text))
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))


def code(tmp: Path, tag: str, generation: int = 1) -> Path:
    path = tmp / f"{tag.replace('/', '_')}-{generation}.py"
    path.write_text(f"# generation {generation}\n" + PREPROCESS_XY.replace("TAG", tag))
    return path


def test_every_request_succeeds_from_a_live_version_while_everything_changes(
    server: tuple[str, Client], tmp_path: Path
) -> None:
    url, client = server
    svc = "default"
    models = []
    for seed in range(3):
        train_sklearn(tmp_path / f"m{seed}.pkl", seed)
        models.append(
            client.upload_model(tmp_path / f"m{seed}.pkl", name="other", project="t", framework="sklearn")
        )
    auto_model = tmp_path / "m0.pkl"
    life = Lifetimes()
    t0 = time.monotonic()
    for version in ("1", "2"):
        client.add_endpoint(svc, "iris", version, engine="sklearn", model_id=models[0]["id"],
                            preprocess=code(tmp_path, f"iris/{version}"))  # fmt: skip
    life.add("iris/1", "iris/2", at=t0)
    client.add_canary(svc, "ab", weights=[0.5, 0.5], targets=["iris/1", "iris/2"])
    client.upload_model(auto_model, name="iris", project="demo", framework="sklearn", publish=True)
    rule = client.add_auto_deploy(svc, "auto", engine="sklearn", name="iris", project="demo", published=True,
                                  max_versions=2, preprocess=code(tmp_path, "auto"))  # fmt: skip
    life.add(*(d["key"] for d in rule["deployed"]), at=t0)
    client.add_canary(svc, "auto_ab", weights=[0.1, 0.9], prefix="auto")
    wait_for(
        lambda: all(httpx.post(f"{url}{p}", json=BODY).status_code == 200 for p in PATHS * 4), timeout=20
    )

    load = Load(url)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(1)

        def change(name: str, fn: object) -> None:
            assert callable(fn)
            fn()
            time.sleep(0.7)

        # a new endpoint version joins the canary
        started = time.monotonic()
        client.add_endpoint(svc, "iris", "3", engine="sklearn", model_id=models[1]["id"],
                            preprocess=code(tmp_path, "iris/3"))  # fmt: skip
        life.add("iris/3", at=started)
        change(
            "canary 3 ways",
            lambda: client.add_canary(svc, "ab", [0.2, 0.4, 0.4], ["iris/1", "iris/2", "iris/3"]),
        )
        change("new model", lambda: client.update_endpoint(svc, "iris", "1", model_id=models[2]["id"]))
        change(
            "new code",
            lambda: client.update_endpoint(svc, "iris", "2", preprocess=code(tmp_path, "iris/2", 2)),
        )
        change(
            "weights all to 1",
            lambda: client.add_canary(svc, "ab", [1, 0, 0], ["iris/1", "iris/2", "iris/3"]),
        )
        change(
            "weights to 2 and 3",
            lambda: client.add_canary(svc, "ab", [0, 1, 1], ["iris/1", "iris/2", "iris/3"]),
        )
        for _ in range(3):  # auto-deployed by publishing; the oldest retired each time
            before = {d["key"] for d in client.get_auto_deploy(svc, "auto")["deployed"]}
            started = time.monotonic()
            client.upload_model(auto_model, name="iris", project="demo", framework="sklearn", publish=True)
            after = {d["key"] for d in client.get_auto_deploy(svc, "auto")["deployed"]}
            returned = time.monotonic()
            life.add(*(after - before), at=started)
            life.removed.update({key: returned for key in before - after})
            assert len(after - before) == 1 and len(before - after) == (1 if len(before) == 2 else 0)
            time.sleep(0.7)
        new_auto = code(tmp_path, "auto", 2)
        change("auto code", lambda: client.update_auto_deploy(svc, "auto", preprocess=new_auto,
                                                              apply_to_existing=True))  # fmt: skip
        change("3 leaves the canary", lambda: client.add_canary(svc, "ab", [1, 1], ["iris/1", "iris/2"]))
        client.remove_endpoint(svc, "iris", "3")
        life.removed["iris/3"] = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop.set()
        thread.join(15)
    elapsed = load.results[-1][2] - load.results[0][1]
    failed = [r for r in load.results if r[3] != 200]
    assert not failed, failed[:5]
    stale = [r for r in load.results if not life.live(r[4], r[1], r[2])]
    assert not stale, (stale[:5], life)
    served = {r[4] for r in load.results}
    assert {"iris/1", "iris/2", "iris/3"} <= served and len({k for k in served if k.startswith("auto/")}) >= 3
    assert len(load.results) > 0.7 * load.rate_hz * elapsed  # the rate held
    assert max(r[2] - r[1] for r in load.results) < 1.0  # no request waited on a swap
    codes = {r[4]: r[5] for r in load.results}
    assert '"code":"iris/2"' in codes["iris/2"]
