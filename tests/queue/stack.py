"""A real deployment for the queue end-to-end tests and bench/queue_throughput.py, as processes.

* the all-in-one server (control plane + a replica) in a subprocess, home in a temp folder;
* a small sklearn model (LinearRegression on 4 features: every input has its own answer)
  registered over the REST API with a Preprocess that turns ``{"x": ...}`` into rows;
* ``python -m modelyard.cli.queue_worker`` processes, killed or stopped at will.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

PYTHON = sys.executable
SERVER = (
    "from modelyard.server import run_all_in_one; from modelyard.settings import Settings; "
    "run_all_in_one(Settings())"
)
PREPROCESS = """
import numpy as np


class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        x = np.asarray(body["x"], dtype=np.float64)
        return x.reshape(1, -1) if x.ndim == 1 else x

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data, "code": "TAG"}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(path: Path, features: int = 4, seed: int = 0) -> LinearRegression:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, features))
    y = x @ rng.normal(size=features) + 0.1 * rng.normal(size=200)
    model = LinearRegression().fit(x, y)
    joblib.dump(model, path)
    return model


class Stack:
    def __init__(self, root: Path, redis_url: str) -> None:
        self.root = root
        self.home = root / "home"
        self.redis_url = redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.http: httpx.Client | None = None
        self.model: LinearRegression | None = None
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MODELYARD_HOME=str(self.home),
            MODELYARD_URL=self.url,
            MODELYARD_REDIS_URL=self.redis_url,
            MODELYARD_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        env.pop("MODELYARD_SETTINGS_JSON", None)
        env.update(self.extra_env)
        return env

    # -- server and model ----------------------------------------------------------------------------
    def start_server(self, timeout: float = 60) -> None:
        env = self.env()
        env["MODELYARD_PORT"] = str(self.port)
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.server = subprocess.Popen([PYTHON, "-c", SERVER], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.1)
        token = (self.home / "token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=30)

    def _upload(self, data: bytes) -> str:
        assert self.http is not None
        response = self.http.post("/api/artifacts", content=data)
        assert response.status_code == 201, response.text
        return str(response.json()["sha256"])

    def deploy(
        self, endpoint: str = "lin", version: str = "1", tag: str = "v1", source: str = PREPROCESS
    ) -> LinearRegression:
        """Register the model and an endpoint serving it with the Preprocess above (or ``source``)."""
        assert self.http is not None
        path = self.root / "lin.pkl"
        if self.model is None:
            self.model = train(path)
            response = self.http.post(
                "/api/models",
                json={"name": "lin", "project": "queue", "framework": "sklearn",
                      "artifact_sha256": self._upload(path.read_bytes()), "filename": "lin.pkl"},
            )  # fmt: skip
            assert response.status_code == 201, response.text
            self.model_id = response.json()["id"]
        self.set_code(endpoint, version, tag, create=True, source=source)
        return self.model

    def set_code(
        self, endpoint: str, version: str, tag: str, create: bool = False, source: str = PREPROCESS
    ) -> None:
        assert self.http is not None
        code = {"sha256": self._upload(source.replace("TAG", tag).encode()), "filename": "pre.py"}
        if create:
            spec: dict[str, Any] = {"endpoint": endpoint, "version": version, "engine": "sklearn",
                                    "model_id": self.model_id, "preprocess": code}  # fmt: skip
            response = self.http.post("/api/services/default/endpoints", json=spec)
            assert response.status_code in (200, 201), response.text
        else:
            response = self.http.patch(f"/api/services/default/endpoints/{endpoint}/{version}",
                                       json={"preprocess": code})  # fmt: skip
            assert response.status_code == 200, response.text

    # -- workers -------------------------------------------------------------------------------------
    def start_worker(self, name: str, stream: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"worker-{name}.log", "wb")  # noqa: SIM115
        cmd = [PYTHON, "-m", "modelyard.cli.queue_worker", "--service", "default", "--stream", stream,
               "--consumer", name, "--cache-dir", str(self.root / f"cache-{name}"), *args]  # fmt: skip
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def worker_log(self, name: str) -> str:
        return (self.root / f"worker-{name}.log").read_text(errors="replace")

    def stop_workers(self, timeout: float = 10) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers = []

    def close(self) -> None:
        self.stop_workers()
        if self.http is not None:
            self.http.close()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
