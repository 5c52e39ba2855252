"""Several replicas on real backends: PostgreSQL, an S3 store, Redis, every part its own process.

* the control plane alone (``modelyard control-plane``) on a fresh PostgreSQL database, its
  artifacts in S3 (moto's server mode, started here);
* two ``modelyard inference`` replicas and two ``modelyard queue-worker`` processes following it;
* client load through both replicas (HTTP, ``/serve/lin``) and the queue (Redis stream, endpoint
  ``lin``) all along;
* an auto-deploy rule (``modelyard auto-deploy add --endpoint lin ... --published --max-versions
  1``), and a new model rolled out mid-run by publishing it, nothing else (``modelyard model
  publish ID``): the rule deploys it as ``lin/<n+1>`` and drops ``lin/<n>`` in the same change.
  ``/serve/lin`` and the queue workers' ``lin`` name no version, so they follow the highest
  version serving; the dropped one keeps answering them until its successor has loaded on that
  replica (``serving/table.py``). Every replica, HTTP and queue, serves the new model within a
  second of the publish call returning; no request fails, no queue input is lost;
* the control plane is stopped (replicas keep serving) and started again: a model published
  after the restart reaches every replica.

Each model answers ``x0 + x1 + 1000 * (version - 1)``, so every answer says which version gave it
and that it belongs to its own input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import redis
from sklearn.linear_model import LinearRegression

from modelyard.client import Client
from modelyard.queue import InputQueue, OutputQueue
from tests.conftest import REDIS_URL, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
MOTO = str(Path(sys.executable).with_name("moto_server"))
BUCKET = "modelyard-scaleout"
PREPROCESS = """
import numpy as np


def _one(value):
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return np.array([[_one(body["x0"]), _one(body["x1"])]])

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": _one(data)}
"""


def version_of(x0: float, x1: float, y: float) -> int:
    """The model version that gave ``y`` for ``(x0, x1)``; AssertionError if it fits none."""
    offset = (y - x0 - x1) / 1000.0
    version = round(offset) + 1
    assert abs(offset - (version - 1)) < 1e-3 and version >= 1, (x0, x1, y)
    return version


def wait_until(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, url)


@dataclass
class Stack:
    root: Path
    database_url: str
    stream: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cp_port: int = field(default_factory=free_port)
    s3_port: int = field(default_factory=free_port)
    replica_ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    token: str = ""

    @property
    def cp_url(self) -> str:
        return f"http://127.0.0.1:{self.cp_port}"

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.replica_ports]

    def env(self, home: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
        env.update(
            MODELYARD_HOME=str(self.root / home),
            MODELYARD_LOG_LEVEL="warning",
            MODELYARD_REDIS_URL=REDIS_URL,
            MODELYARD_STATS_INTERVAL_S="0",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def start_s3(self) -> None:
        proc = self.start("moto", [MOTO, "-H", "127.0.0.1", "-p", str(self.s3_port)], self.env("moto"))
        wait_http(f"http://127.0.0.1:{self.s3_port}/moto-api/", proc, self.root / "moto.log")
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)

    def start_control_plane(self) -> None:
        env = self.env("control-plane")
        env.update(
            MODELYARD_DATABASE_URL=self.database_url,
            MODELYARD_ARTIFACTS_URL=f"s3://{BUCKET}/artifacts",
            MODELYARD_ARTIFACTS_OPTIONS=json.dumps({"endpoint_url": f"http://127.0.0.1:{self.s3_port}"}),
        )
        cmd = [MODELYARD, "control-plane", "--port", str(self.cp_port)]
        proc = self.start("control-plane", cmd, env)
        wait_http(f"{self.cp_url}/api/health", proc, self.root / "control-plane.log")
        self.token = (self.root / "control-plane" / "token").read_text().strip()

    def start_replicas(self) -> None:
        for i, port in enumerate(self.replica_ports):
            cmd = [MODELYARD, "--token", self.token, "inference", "--service", "default",
                   "--control-plane", self.cp_url, "--port", str(port)]  # fmt: skip
            self.start(f"replica-{i}", cmd, self.env(f"replica-{i}"))
        for i in range(2):
            cmd = [MODELYARD, "queue-worker", "--service", "default", "--endpoint", "lin",
                   "--stream", self.stream, "--control-plane", self.cp_url, "--token", self.token,
                   "--consumer", f"q{i}", "--block-ms", "100", "--batch-size", "32"]  # fmt: skip
            self.start(f"queue-{i}", cmd, self.env(f"queue-{i}"))

    def client(self) -> Client:
        return Client(self.cp_url, token=self.token, timeout=30)

    def upload(self, version: int) -> dict[str, Any]:
        """Train and upload (unpublished) model version ``version`` (answers x0 + x1 + 1000 * (v - 1))."""
        x = np.random.default_rng(version).normal(size=(50, 2)) * 10
        model = LinearRegression().fit(x, x.sum(axis=1) + 1000 * (version - 1))
        path = self.root / f"lin-{version}.pkl"
        joblib.dump(model, path)
        with self.client() as c:
            return c.upload_model(path, name="lin", project="scaleout", framework="sklearn")

    def cli(self, *args: str) -> tuple[str, float]:
        """Run ``modelyard ARGS`` against the control plane; its output and when it returned."""
        env = {**self.env("cli"), "MODELYARD_URL": self.cp_url, "MODELYARD_TOKEN": self.token}
        done = subprocess.run([MODELYARD, *args], env=env, capture_output=True, timeout=60)
        returned = time.time()
        assert done.returncode == 0, (args, done.stderr.decode())
        return done.stdout.decode(), returned

    def publish(self, model: dict[str, Any]) -> float:
        """``modelyard model publish ID``, the whole roll-out; when the call returned."""
        out, returned = self.cli("model", "publish", model["id"])
        assert f"(lin v{model['version']}) published" in out, out
        return returned

    def deployed(self) -> list[str]:
        with self.client() as c:
            return sorted(e["key"] for e in c.list_endpoints("default"))

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.root.glob("*.log")
        )


@dataclass
class Load:
    """HTTP clients alternating over both replicas, and a producer on the queue."""

    stack: Stack
    answers: list[tuple[float, int, int]] = field(default_factory=list)
    """(time, replica index, model version) of every HTTP answer."""
    failures: list[str] = field(default_factory=list)
    queued: dict[str, tuple[float, float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def http_client(self, index: int) -> None:
        urls = self.stack.replica_urls
        n = 0
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                replica = (n + index) % len(urls)
                x0, x1 = float(index * 1_000_000 + n), float(n % 7)
                n += 1
                try:
                    response = http.post(f"{urls[replica]}/serve/lin", json={"x0": x0, "x1": x1})
                except httpx.HTTPError as exc:
                    self.failures.append(f"replica {replica}: {type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"replica {replica}: {response.status_code} {response.text}")
                    continue
                self.answers.append((time.time(), replica, version_of(x0, x1, response.json()["y"])))
                time.sleep(0.005)

    def producer(self) -> None:
        q = InputQueue(REDIS_URL, self.stack.stream, endpoint="lin")
        n = 0
        try:
            while not self.stop.is_set():
                batch = []
                for _ in range(5):
                    uri = f"in-{n}"
                    x = (float(n), float(n % 5))
                    self.queued[uri] = x
                    batch.append((uri, {"x0": np.array([x[0]]), "x1": np.array([x[1]])}))
                    n += 1
                q.enqueue_batch(batch)
                time.sleep(0.05)
        finally:
            q.close()

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.http_client, args=(i,), daemon=True) for i in range(2)]
        self.threads.append(threading.Thread(target=self.producer, daemon=True))
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def first_seen(self, version: int, since: float) -> dict[int, float]:
        """Per replica, how long after ``since`` it first answered with ``version``."""
        out: dict[int, float] = {}
        for at, replica, v in self.answers:
            if v >= version and at >= since and replica not in out:
                out[replica] = at - since
        return out


@pytest.fixture
def stack(tmp_path: Path, pg_database_url: str, rclient: redis.Redis) -> Iterator[Stack]:
    s = Stack(tmp_path, pg_database_url, f"test-scaleout-{uuid.uuid4().hex[:12]}")
    try:
        yield s
    finally:
        s.close()
        keys = list(rclient.scan_iter(match=f"{s.stream}*", count=1000))
        if keys:
            rclient.delete(*keys)


def queue_switch(out: OutputQueue, load: Load, version: int, since: float) -> tuple[dict[str, float], int]:
    """Per queue worker, seconds from ``since`` to its first result of ``version``; stale results
    finished more than a second after ``since``."""
    first: dict[str, float] = {}
    stale = 0
    for uri, result in out.results(list(load.queued)):
        if result is None or result.finished_ms is None:
            continue
        x0, x1 = load.queued[uri]
        v = version_of(x0, x1, float(np.asarray(result.value["y"]).reshape(-1)[0]))
        finished = result.finished_ms / 1000.0
        worker = (result.worker or "?").rsplit("-", 1)[0]
        if v >= version and finished >= since:
            first[worker] = min(first.get(worker, 1e9), finished - since)
        elif v < version and finished > since + 1.0:
            stale += 1
    return first, stale


def test_two_replicas_two_queue_workers_postgres_s3_publish_and_control_plane_restart(stack: Stack) -> None:
    started = time.monotonic()
    stack.start_s3()
    stack.start_control_plane()
    code = stack.root / "pre.py"
    code.write_text(PREPROCESS)
    out, _ = stack.cli(
        "auto-deploy", "add", "--endpoint", "lin", "--engine", "sklearn", "--name", "lin",
        "--project", "scaleout", "--published", "--max-versions", "1", "--preprocess", str(code),
    )  # fmt: skip
    assert "nothing yet" in out, out  # no published model so far
    stack.publish(stack.upload(1))
    assert stack.deployed() == ["lin/1"]
    stack.start_replicas()
    for url in stack.replica_urls:
        wait_until(lambda url=url: _serving(url), 60, f"{url} serving")  # type: ignore[misc]
    out = OutputQueue(REDIS_URL, stack.stream)
    warm = InputQueue(REDIS_URL, stack.stream, endpoint="lin")
    assert warm.predict(x0=np.array([1.0]), x1=np.array([2.0]), timeout=60)["y"] is not None
    wait_until(lambda: len(out.workers()) == 2, 60, "two queue workers")
    ready_at = time.monotonic()

    load = Load(stack)
    load.start()
    try:
        time.sleep(2.0)
        # -- a new model version, rolled out mid-run by publishing it -------------------------------
        v2 = stack.upload(2)
        switched = stack.publish(v2)
        deployed_after_publish = stack.deployed()
        time.sleep(2.5)
        http_switch = load.first_seen(2, switched)
        # -- the control plane goes away: replicas keep serving ------------------------------------------
        stack.stop("control-plane")
        down_at = time.time()
        time.sleep(2.5)
        served_while_down = {r for at, r, _ in load.answers if at > down_at + 0.5}
        stack.start_control_plane()
        # -- and comes back: a model published now reaches every replica --------------------------------
        resynced = stack.publish(stack.upload(3))
        wait_until(lambda: len(load.first_seen(3, resynced)) == 2, 15, "both replicas on version 3")
        time.sleep(1.5)
    finally:
        load.finish()
        warm.close()
    # nothing was lost: every queued input has exactly its own answer
    wait_until(
        lambda: out.count() >= len(load.queued),
        30,
        f"{len(load.queued)} queue results ({out.count()} at start)",
    )
    assert out.dead_letters() == []
    q_switch, q_stale = queue_switch(out, load, 2, switched)
    q_resync, _ = queue_switch(out, load, 3, resynced)
    out.close()
    resync = load.first_seen(3, resynced)
    report = (
        f"HTTP answers {len(load.answers)}, queue inputs {len(load.queued)}; switch to v2 per replica "
        f"{http_switch}, per queue worker {q_switch}; after the restart v3 per replica {resync}, "
        f"per queue worker {q_resync}; ready after {ready_at - started:.1f} s, total "
        f"{time.monotonic() - started:.1f} s"
    )
    print("\n" + report)
    assert deployed_after_publish == ["lin/2"], "the rule replaced lin/1 in the publish itself"
    assert stack.deployed() == ["lin/3"]
    assert load.failures == [], (load.failures[:10], stack.logs())
    assert set(http_switch) == {0, 1} and max(http_switch.values()) < 1.0, report
    # after its switch a replica never answers with the old version again
    for replica, delay in http_switch.items():
        late = [v for at, r, v in load.answers if r == replica and at > switched + delay and v < 2]
        assert not late, (replica, late[:5])
    assert set(q_switch) == {"q0", "q1"} and max(q_switch.values()) < 1.0, report
    assert q_stale == 0, report
    assert served_while_down == {0, 1}, report
    assert set(resync) == {0, 1} and set(q_resync) == {"q0", "q1"}, report


def _serving(url: str) -> bool:
    try:
        return httpx.post(f"{url}/serve/lin", json={"x0": 1, "x1": 2}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
