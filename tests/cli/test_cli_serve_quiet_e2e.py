"""The servers as a user starts them (the console script, real processes): what they print.

Quiet by default (no Alembic steps, no line per HTTP call of a replica's or queue worker's
client, an unreachable control plane logged with back-off), ``--access-log``,
``MODELYARD_LOG_FORMAT=json``, ``--log-level``, ``GET /`` → ``/ui``, and Ctrl-C stopping
``modelyard serve`` within 3 s while a replica long-polls it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.servers import free_port, stop_process_group
from tests.serving.helpers import wait_for

pytestmark = pytest.mark.slow

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    return {**env, "MODELYARD_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


@contextmanager
def started(args: list[str], home: Path, log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``modelyard <args>`` in its own session, stderr and stdout to ``log``; stopped at the end."""
    home.mkdir(parents=True, exist_ok=True)
    out: IO[Any] = open(log, "wb")  # noqa: SIM115 - open for the process's lifetime
    proc = subprocess.Popen(
        [MODELYARD, *args],
        env=_env(home, **env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process_group(proc, 20)
        out.close()


def _up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout=90, interval=0.2)


def _stop_with_sigint(proc: subprocess.Popen[bytes]) -> float:
    """Ctrl-C as a terminal sends it: SIGINT to the process group; seconds until it exited."""
    started_at = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    return time.monotonic() - started_at


def test_serve_is_quiet_stops_on_ctrl_c_with_a_replica_long_polling(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_log, replica_log = tmp_path / "serve.log", tmp_path / "replica.log"
    with started(["serve", "--port", str(port)], tmp_path / "home", serve_log) as serve:
        _up(url, serve, serve_log)
        redirect = httpx.get(f"{url}/", timeout=10)
        assert redirect.status_code == 307 and redirect.headers["location"] == "/ui"
        assert httpx.get(f"{url}/", follow_redirects=True, timeout=10).status_code == 200
        token = (tmp_path / "home" / "token").read_text().strip()
        replica_port = free_port()
        with started(
            ["inference", "--control-plane", url, "--port", str(replica_port), "--token", token],
            tmp_path / "replica-home",
            replica_log,
        ) as replica:

            def reported() -> bool:
                assert replica.poll() is None, replica_log.read_text()
                status = httpx.get(f"{url}/api/services/default/status", timeout=5).json()
                return len(status["replicas"]) == 2  # the one inside serve, and this one

            wait_for(reported, timeout=90, interval=0.2)
            time.sleep(0.5)  # both replicas are in their 20 s long-poll now
            took = _stop_with_sigint(serve)
            assert took < 3.0, f"serve took {took:.1f} s to stop after Ctrl-C\n{serve_log.read_text()}"
            # the replica keeps serving and says once (not every second) that it lost the control plane
            time.sleep(3)
            assert replica.poll() is None
            lines = replica_log.read_text().splitlines()
            unreachable = [line for line in lines if "control plane unreachable" in line]
            assert len(unreachable) == 1, "\n".join(lines)
            assert "next report in 10 s" in unreachable[0]
            assert "HTTP Request" not in replica_log.read_text()  # its status reports and long-polls
    served = serve_log.read_text()
    assert "alembic" not in served.lower(), served
    assert "HTTP Request" not in served, served
    assert "GET / HTTP" not in served and '"GET /' not in served, "no access log unless asked"
    assert "Uvicorn running on" in served  # the one line a user needs is still there


def test_access_log_and_json_format(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with started(
        ["serve", "--port", str(port), "--access-log"], tmp_path / "home", log, MODELYARD_LOG_FORMAT="json"
    ) as serve:
        _up(url, serve, log)
        httpx.post(f"{url}/serve/nope", json={}, timeout=10)
        _stop_with_sigint(serve)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records, "nothing logged"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["path"] == "/api/health" and r["status"] == 200 for r in access), access
    assert any(r["method"] == "POST" and r["path"] == "/serve/nope" and r["status"] == 404 for r in access)
    assert any("Uvicorn running" in r["message"] for r in records)


def test_log_level_warning_prints_nothing_on_a_clean_run(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "cp.log"
    with started(
        ["control-plane", "--port", str(port), "--log-level", "warning"], tmp_path / "home", log
    ) as cp:
        _up(url, cp, log)
        assert httpx.get(f"{url}/", timeout=10).headers.get("location") == "/ui"
        took = _stop_with_sigint(cp)
    assert log.read_text().strip() == "", log.read_text()
    assert took < 3.0
    bad = subprocess.run(
        [MODELYARD, "control-plane", "--log-level", "loud"], env=_env(tmp_path / "h2"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        bad.returncode == 1
        and "log_level 'loud' is not one of: critical, error, warning, info, debug" in bad.stderr
    )


@pytest.mark.redis
def test_queue_worker_logs_no_line_per_http_call(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_log, worker_log = tmp_path / "serve.log", tmp_path / "worker.log"
    with started(["serve", "--port", str(port)], tmp_path / "home", serve_log) as serve:
        _up(url, serve, serve_log)
        token = (tmp_path / "home" / "token").read_text().strip()
        stream = f"quiet-{port}"
        with started(
            ["--url", url, "--token", token, "queue-worker", "--stream", stream, "--redis-url", redis_url],
            tmp_path / "worker-home",
            worker_log,
        ) as worker:
            # the worker follows the service over HTTP: make it fetch a new configuration
            admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=10)
            wait_for(lambda: "consuming" in worker_log.read_text() or worker.poll() is not None, timeout=60)
            assert worker.poll() is None, worker_log.read_text()
            created = admin.post(
                "/api/services/default/endpoints",
                json={"endpoint": "code", "version": "1", "engine": "custom"},
            )
            assert created.status_code in (200, 201), created.text
            time.sleep(2)
            assert worker.poll() is None, worker_log.read_text()
    text = worker_log.read_text()
    assert "HTTP Request" not in text, text
    assert "INFO" in text  # it does log at info level: its own lines, not its client's
