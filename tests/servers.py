"""Real servers for tests: an ASGI app under uvicorn in a background thread.

    from tests.servers import run_uvicorn_in_thread

    with run_uvicorn_in_thread(app, free_port()) as url:
        httpx.get(f"{url}/api/health")

The context manager returns once the port answers and, on exit, asks uvicorn to
shut down (lifespan shutdown included) and joins the thread.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from modelyard.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once ``host:port`` accepts TCP connections; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answers on {host}:{port} in {timeout:g} s") from None
            time.sleep(0.02)


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass


@contextmanager
def run_uvicorn_in_thread(
    app: Any,
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    timeout: float = 10.0,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (a free port when ``None``); yields ``http://host:port``.

    Extra keyword arguments go to :class:`uvicorn.Config` (``log_level`` defaults to warning).
    Raises ``RuntimeError`` if the server dies while starting (port taken, startup failed).
    """
    port = port or free_port()
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "auto")
    server = _ThreadServer(uvicorn.Config(app, host=host, port=port, **config))
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            server.run()
        except BaseException as exc:  # SystemExit from uvicorn on bind/startup errors
            failure.append(exc)

    thread = threading.Thread(target=_run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on {host}:{port} exited while starting: {failure!r}")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise TimeoutError(f"uvicorn on {host}:{port} did not start within {timeout:g} s")
        time.sleep(0.02)
    wait_for_port(host, port, timeout)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():  # a stuck request or lifespan: force it
            server.force_exit = True
            thread.join(5)


@dataclass
class RunningControlPlane:
    """A control plane app served by uvicorn for one test."""

    url: str
    settings: Settings

    @property
    def home(self) -> Path:
        return self.settings.resolved_home()

    @property
    def admin_token(self) -> str:
        """The admin token the control plane wrote to ``<home>/token`` on its first start."""
        return self.settings.token_file().read_text().strip()


@contextmanager
def run_control_plane(settings: Settings, port: int | None = None) -> Iterator[RunningControlPlane]:
    """``modelyard.control.api.create_control_app(settings)`` under uvicorn in a thread."""
    from modelyard.control.api import create_control_app

    app = create_control_app(settings)
    with run_uvicorn_in_thread(app, port) as url:
        yield RunningControlPlane(url=url, settings=settings)


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM a server started with ``start_new_session=True`` (its workers too); SIGKILL it all
    if it has not exited within ``timeout`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # stopped already (a test took it down): reap it
        proc.wait(timeout)
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
