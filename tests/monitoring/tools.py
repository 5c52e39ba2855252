"""Test setup for the monitoring tests: Debian packages installed when missing, load generators,
reading a Prometheus text exposition, and ``modelyard serve --workers N`` as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, stop_process_group
from tests.serving.helpers import wait_for

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def ensure_debian_package(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian's ``package`` first when it is missing (root or sudo)."""
    found = shutil.which(binary)
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([*sudo, "apt-get", "update", "-qq"], [*sudo, "apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"installing {package} failed ({' '.join(command)}): {result.stderr[-2000:]}")
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"{package} is installed but {binary} is not on PATH")
    return found


@dataclass
class Load:
    """Background traffic: ``threads`` clients posting ``make()`` requests until stopped."""

    url: str
    make: Callable[[int], tuple[str, dict[str, object]]]
    threads: int = 4
    pause_s: float = 0.0
    log: list[tuple[float, str, int, float]] = field(default_factory=list)
    """(finished at, path, status, seconds) per request."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, worker: int) -> None:
        i = worker
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                path, body = self.make(i)
                started = time.monotonic()
                try:
                    status = http.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                now = time.monotonic()
                self.log.append((now, path, status, now - started))
                i += self.threads
                if self.pause_s:
                    time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(10)

    def rate(self, path: str, window_s: float, status: int = 200) -> float:
        """Requests per second to ``path`` with ``status`` over the last ``window_s`` seconds."""
        since = time.monotonic() - window_s
        return sum(1 for t, p, s, _ in list(self.log) if t >= since and p == path and s == status) / window_s


def samples(text: str) -> dict[str, float]:
    """``{'name{a="1",b="2"}': value}`` with labels sorted, for every sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def value(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in metrics.items():
        if key.split("{", 1)[0] == name and all(f'{k}="{val}"' in key for k, val in labels.items()):
            total += v
    return total


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serve_workers(home: Path, workers: int = 2, **settings: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``modelyard serve --workers N`` in its own process group on a free port, with
    ``MODELYARD_HOME=home`` and ``settings`` (``MODELYARD_*`` variables) on top of this environment.

    Yields the URL once ``/api/health`` answers, and the environment (for CLI calls against it);
    the server's output goes to ``home/serve.log``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_URL": url, **settings}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(home / "serve.log", "w+") as log:
        proc = subprocess.Popen(
            [MODELYARD, "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: answers(f"{url}/api/health"), timeout=60, interval=0.2)
            yield url, env
        finally:
            stop_process_group(proc, 20)
