"""One listening socket per worker process (``SO_REUSEPORT``), so the kernel spreads connections.

uvicorn's multiprocess mode binds ONE socket in the parent and every worker accepts from it.
With keep-alive clients that is uneven: a burst of new connections wakes one worker, whose
event loop accepts everything queued, and those connections then stay with it for their whole
life. Measured (issue 14): the same ``serve --workers 2`` under 16 keep-alive connections made
1,580 requests/s on one start and 2,499 on the next, with one worker doing most of the work.

Here the parent binds N sockets to the same address with ``SO_REUSEPORT`` and hands socket *i*
to worker slot *i*, for good: a worker that dies is replaced on the same socket, so connections
the kernel queued on it wait for the replacement rather than being reset. Linux picks the
socket of each new connection by a hash of its addresses and ports, spreading them evenly over
the listening workers. Before binding, the address is taken once WITHOUT ``SO_REUSEPORT``, so a
port that another server (even another ``modelyard serve``) holds still fails with "address in
use" instead of silently sharing its traffic. (A process of the same user could still join the
group later by binding with ``SO_REUSEPORT`` itself; Linux refuses other users, and a same-user
process can already do worse to the server.)

Linux only (elsewhere ``SO_REUSEPORT`` does not balance: BSD and macOS give every connection to
one socket); other platforms, and ``MODELYARD_REUSE_PORT=false``, keep uvicorn's shared socket.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("modelyard.server")


def supported() -> bool:
    """Whether ``SO_REUSEPORT`` balances connections here (Linux 3.9+)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_sockets(
    host: str, port: int, count: int, backlog: int = 2048, *, probe: bool = True
) -> list[socket.socket]:
    """``count`` sockets bound to ``host:port`` with ``SO_REUSEPORT``, listening.

    Raises ``OSError`` (``EADDRINUSE``) when anything already holds the address, with or without
    ``SO_REUSEPORT``. Port 0 picks one free port for all of them. They listen at once (not when
    a worker starts, as uvicorn's shared socket does), so a second server probing the port right
    after finds it taken; connections made before the workers are up wait in the backlog.
    ``probe=False`` joins a group this process already holds (one more worker).
    """
    family = _family(host)
    if probe:
        with socket.socket(family) as first:  # no SO_REUSEPORT: fails on any holder of the port
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind((host, port))
            port = first.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ReusePortSupervisor(Multiprocess):
    """uvicorn's supervisor (health checks, restarts, signals) with a socket of its own per worker."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets[:1])
        self.slots = list(sockets)
        self.processes_num = len(self.slots)

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.slots[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(len(self.slots))]

    def keep_subprocess_alive(self) -> None:
        """A dead or hung worker is replaced on its own socket; one that never started stops all."""
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # the app cannot start: retrying would loop
                log.error("worker %s failed to start, stopping", process.pid)
                self.should_exit.set()
                return
            log.info("worker %s died, starting another on its socket", process.pid)
            self.processes[slot] = self._start(slot)

    def restart_all(self) -> None:
        """SIGHUP: each worker in turn hands its socket to a ready replacement."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    log.error("replacement worker %s not ready in time; restart stopped", new.pid)
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:
        """SIGTTIN: one more worker, on a socket of its own."""
        port = self.slots[0].getsockname()[1]
        try:
            (sock,) = bind_sockets(self.config.host, port, 1, self.config.backlog, probe=False)
        except OSError as exc:
            log.error("cannot add a worker: %s", exc)
            return
        self.slots.append(sock)
        self.processes_num = len(self.slots)
        self.processes.append(self._start(len(self.slots) - 1))

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer. Its socket leaves the group when the worker stops listening
        (the parent's copy is closed first); connections the kernel had queued on it but the
        worker never accepted are reset, as with any closed ``SO_REUSEPORT`` socket."""
        if len(self.processes) <= 1:
            log.info("one worker left; not stopping it")
            return
        process = self.processes.pop()
        self.slots.pop().close()
        self.processes_num = len(self.slots)
        process.terminate()
        process.join()


def run(config: Config) -> None:
    """Serve ``config`` (an import string, ``config.workers`` > 1) with one socket per worker."""
    try:
        sockets = bind_sockets(config.host, config.port, config.workers, config.backlog)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        log.error("cannot listen on %s:%s: %s", config.host, config.port, reason)
        sys.exit(STARTUP_FAILURE)
    # uvicorn's own line (it prints it when it binds), so a user sees the same thing either way
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit; %d sockets, one per worker)",
        config.host, sockets[0].getsockname()[1], len(sockets),
    )  # fmt: skip
    try:
        ReusePortSupervisor(config, sockets).run()
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
