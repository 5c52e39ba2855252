"""``serve --workers N`` gives each worker its own ``SO_REUSEPORT`` listening socket (issue 14).

With uvicorn's one shared socket, a burst of keep-alive connections could all land on one worker
(measured: 16 connections split 16/0 in 3 of 12 wrk runs). Checked on a real ``modelyard serve``:
one listening socket per worker, connections held by both workers, a killed worker replaced on
its socket, and a port someone else holds still refused (SO_REUSEPORT must not share it).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard import reuseport
from tests.servers import free_port, stop_process_group
from tests.serving.helpers import wait_for

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def _port_sockets(port: int) -> dict[str, str]:
    """inode -> TCP state (01 established, 0A listen) of the sockets whose local port is ``port``."""
    states = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "0A"):
                states[fields[9]] = fields[3]
    return states


def _held(pid: int, port: int) -> list[str]:
    """States of the port's sockets that process ``pid`` holds."""
    states = _port_sockets(port)
    out = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # exited meanwhile (the killed worker)
        return []
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in states:
            out.append(states[link[8:-1]])
    return out


def _children(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(entry))
    return out


class Serving:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        return [pid for pid in _children(self.proc.pid) if "0A" in _held(pid, self.port)]


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "info"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("MODELYARD_REUSE_PORT", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MODELYARD, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Serving(proc, port, log)
    try:
        wait_for(lambda: _up(running.url), timeout=90, interval=0.2)
        wait_for(lambda: len(running.worker_pids()) == 2, timeout=30, interval=0.2)
        yield running
    finally:
        stop_process_group(proc, 20)


def test_bind_sockets_share_one_port_and_refuse_a_taken_one() -> None:
    assert reuseport.supported()  # CI and the servers this targets are Linux
    sockets = reuseport.bind_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1, ports  # port 0: one free port, all three on it
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        with pytest.raises(OSError) as caught:  # a second group on the same port: refused
            reuseport.bind_sockets("127.0.0.1", ports.pop(), 1)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        for s in sockets:
            s.close()
    with socket.socket() as plain:  # a plain (non-reuseport) holder is respected too
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError):
            reuseport.bind_sockets("127.0.0.1", plain.getsockname()[1], 2)


@pytest.mark.slow
def test_each_worker_listens_on_its_own_socket(serving: Serving) -> None:
    listening = [s for s, state in _port_sockets(serving.port).items() if state == "0A"]
    assert len(listening) == 2, f"one listening socket per worker expected: {listening}"
    pids = serving.worker_pids()
    assert len(pids) == 2
    # 40 keep-alive connections opened at once, like a load generator's: both workers get some
    clients = [socket.create_connection(("127.0.0.1", serving.port)) for _ in range(40)]
    try:
        for c in clients:
            c.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in clients:
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        held = {pid: _held(pid, serving.port).count("01") for pid in pids}
        assert sum(held.values()) == 40, held
        assert min(held.values()) > 0, f"one worker holds every connection: {held}"
    finally:
        for c in clients:
            c.close()
    assert "2 sockets, one per worker" in serving.log.read_text()


@pytest.mark.slow
def test_a_killed_worker_is_replaced_on_its_socket(serving: Serving) -> None:
    before = serving.worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(serving.worker_pids()) == 2 and victim not in serving.worker_pids(), timeout=60)
    listening = [s for s, state in _port_sockets(serving.port).items() if state == "0A"]
    assert len(listening) == 2, listening  # the same two sockets, no third one
    for _ in range(20):  # new connections, hashed over both sockets: all answered
        assert httpx.get(f"{serving.url}/health/live", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_second_server_on_the_same_port_fails(serving: Serving, tmp_path: Path) -> None:
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    started = time.monotonic()
    other = subprocess.run(
        [MODELYARD, "serve", "--host", "127.0.0.1", "--port", str(serving.port), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode != 0
    assert "address already in use" in other.stdout + other.stderr
    assert time.monotonic() - started < 120
    assert _up(serving.url)  # the first one is untouched


@pytest.mark.slow
def test_ttin_and_ttou_add_and_remove_a_worker_with_its_socket(serving: Serving) -> None:
    def listening() -> int:
        return sum(1 for state in _port_sockets(serving.port).values() if state == "0A")

    os.kill(serving.proc.pid, signal.SIGTTIN)
    wait_for(lambda: len(serving.worker_pids()) == 3 and listening() == 3, timeout=60)
    os.kill(serving.proc.pid, signal.SIGTTOU)
    wait_for(lambda: len(serving.worker_pids()) == 2 and listening() == 2, timeout=60)
    assert httpx.get(f"{serving.url}/health/live", timeout=10).status_code == 200
