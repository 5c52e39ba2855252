"""Autoscaling worker processes on one machine: ``modelyard inference --workers auto``.

For users without Kubernetes (whose HorizontalPodAutoscaler does this across pods): the
number of uvicorn worker processes follows load within ``[min_workers, max_workers]``.

* **Load** — the mean number of requests in flight over the last few seconds, summed over
  workers. It is read from the files the workers already share for Prometheus
  (``PROMETHEUS_MULTIPROC_DIR``): the growth of ``modelyard_request_duration_seconds_sum``
  (seconds spent in requests, per second of wall time = mean concurrency, by Little's law),
  or the ``modelyard_inflight_requests`` gauge when that is higher (requests still running).
  Nothing extra happens on the request path.
* **Policy** (:class:`AutoscalePolicy`, no I/O) — ``ceil(load / target_inflight)`` workers;
  up at once (after a short cooldown so a new worker can start), down only to the most any
  decision asked for over ``down_delay_s`` (with 10 % headroom) and no sooner than that after
  the last change.
* **Supervisor** (:class:`AutoscalingSupervisor`) — uvicorn's own multiprocess supervisor
  (health checks, restarts, SIGTTIN/SIGTTOU, graceful SIGTERM), with a decision every
  ``interval_s``. A worker leaving gets SIGTERM, so it finishes its requests before exiting.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from socket import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from modelyard.settings import Settings

log = logging.getLogger("modelyard.autoscale")

INFLIGHT = "modelyard_inflight_requests"
BUSY_SECONDS = "modelyard_request_duration_seconds_sum"


@dataclass(frozen=True)
class LoadSample:
    """One reading of the shared metric files."""

    at: float
    inflight: float
    """Requests in flight now, over live workers."""
    busy_s: float
    """Seconds spent in finished requests since the server started, over all workers."""


def read_load(metrics_dir: str | Path, now: float | None = None) -> LoadSample:
    """Sum the in-flight gauge and the request-time total over every worker's files."""
    from prometheus_client.multiprocess import MultiProcessCollector

    from modelyard.metrics_multiprocess import prune_dead_workers

    path = str(metrics_dir)
    prune_dead_workers(path)
    inflight = busy = 0.0
    for family in MultiProcessCollector(None, path=path).collect():
        for sample in family.samples:
            if sample.name == INFLIGHT:
                inflight += sample.value
            elif sample.name == BUSY_SECONDS:
                busy += sample.value
    return LoadSample(time.monotonic() if now is None else now, max(inflight, 0.0), busy)


@dataclass
class LoadWindow:
    """Mean concurrency over the last ``window_s`` seconds of samples."""

    window_s: float
    samples: deque[LoadSample] = field(default_factory=deque)

    def add(self, sample: LoadSample) -> float:
        """Add ``sample``; the load: max(request-seconds per second, mean in-flight)."""
        self.samples.append(sample)
        while len(self.samples) > 2 and sample.at - self.samples[1].at >= self.window_s:
            self.samples.popleft()
        first = self.samples[0]
        mean_inflight = sum(s.inflight for s in self.samples) / len(self.samples)
        elapsed = sample.at - first.at
        rate = max(sample.busy_s - first.busy_s, 0.0) / elapsed if elapsed > 0 else 0.0
        return max(rate, mean_inflight)


@dataclass
class AutoscalePolicy:
    """How many workers for a load (pure: the caller passes the time)."""

    min_workers: int
    max_workers: int
    target_inflight: float
    up_cooldown_s: float = 2.0
    down_delay_s: float = 30.0
    tolerance: float = 0.1
    """Scale down only when the load with this much headroom fits fewer workers (no flapping
    around a threshold)."""
    _wanted: deque[tuple[float, int]] = field(default_factory=deque)
    _changed_at: float = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoscalePolicy:
        return cls(
            min_workers=settings.min_workers,
            max_workers=settings.resolved_max_workers(),
            target_inflight=settings.autoscale_target_inflight,
            up_cooldown_s=settings.autoscale_up_cooldown_s,
            down_delay_s=settings.autoscale_down_delay_s,
        )

    def wanted(self, load: float) -> int:
        """``ceil(load / target)`` within the bounds."""
        raw = math.ceil(load / self.target_inflight - 1e-9) if load > 0 else 0
        return min(self.max_workers, max(self.min_workers, raw))

    def decide(self, now: float, load: float, current: int) -> int:
        """The worker count to run now, given ``current`` workers and the measured ``load``."""
        wanted = self.wanted(load)
        # what scaling down may go to: the load with some headroom, over the window
        self._wanted.append((now, max(wanted, self.wanted(load * (1 + self.tolerance)))))
        while self._wanted and now - self._wanted[0][0] > self.down_delay_s:
            self._wanted.popleft()
        target = current
        if wanted > current:
            if now - self._changed_at >= self.up_cooldown_s:
                target = wanted
        elif wanted < current and now - self._changed_at >= self.down_delay_s:
            # the most any decision in the last down_delay_s asked for (stabilisation window)
            target = max(w for _, w in self._wanted)
        target = min(self.max_workers, max(self.min_workers, target))
        if target != current:
            self._changed_at = now
        return target


class AutoscalingSupervisor(Multiprocess):
    """uvicorn's multiprocess supervisor whose worker count follows :class:`AutoscalePolicy`."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket],
        *,
        policy: AutoscalePolicy,
        metrics_dir: str | Path,
        interval_s: float = 0.5,
        window_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, sockets)
        self.policy = policy
        self.metrics_dir = str(metrics_dir)
        self.interval_s = interval_s
        self.window = LoadWindow(window_s)
        self.clock = clock
        self.retiring: list[Process] = []
        self.load = 0.0

    def run(self) -> None:
        log.info(
            "autoscaling between %d and %d worker processes (target %g in-flight requests each)",
            self.policy.min_workers,
            self.policy.max_workers,
            self.policy.target_inflight,
        )
        self.init_processes()
        while not self.should_exit.wait(self.interval_s):
            self.handle_signals()
            self.keep_subprocess_alive()
            self.reap()
            if not self.should_exit.is_set():
                self.autoscale()
        self.terminate_all()
        for process in self.retiring:
            process.terminate()
        self.join_all()
        for process in self.retiring:
            process.join()

    def autoscale(self) -> None:
        try:
            sample = read_load(self.metrics_dir, self.clock())
        except (OSError, ValueError) as exc:  # a file being written or removed: next tick
            log.debug("reading the load failed: %s", exc)
            return
        self.load = self.window.add(sample)
        current = len(self.processes)
        target = self.policy.decide(sample.at, self.load, current)
        if target == current:
            return
        log.info(
            "autoscale: %d -> %d worker processes (%.1f requests in flight on average)",
            current,
            target,
            self.load,
        )
        self.scale_to(target)

    def scale_to(self, target: int) -> None:
        """Start or retire workers until ``target`` run; retiring ones finish their requests."""
        while len(self.processes) < target:
            process = Process(self.config, self.sockets)
            process.start()
            self.processes.append(process)
        while len(self.processes) > target:
            process = self.processes.pop()
            process.terminate()  # SIGTERM: uvicorn stops accepting, drains, runs lifespan shutdown
            self.retiring.append(process)
        self.processes_num = len(self.processes)

    def reap(self) -> None:
        """Join retired workers that have exited (without blocking) and drop their live gauges."""
        from prometheus_client.multiprocess import mark_process_dead

        for process in list(self.retiring):
            process.process.join(0)
            if process.process.is_alive():
                continue
            self.retiring.remove(process)
            if process.pid is not None:
                try:
                    mark_process_dead(process.pid, self.metrics_dir)
                except OSError:
                    pass

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]


def run_autoscaled(app: str, settings: Settings, uvicorn_options: dict[str, Any]) -> None:
    """Serve the uvicorn factory ``app`` with an autoscaled number of worker processes."""
    if settings.metrics_dir is None:
        raise ValueError("autoscaling reads the workers' shared metrics folder: set metrics_dir")
    policy = AutoscalePolicy.from_settings(settings)
    config = Config(app, factory=True, host=settings.host, port=settings.port, workers=policy.min_workers,
                    **uvicorn_options)  # fmt: skip
    sock = config.bind_socket()
    supervisor = AutoscalingSupervisor(
        config,
        [sock],
        policy=policy,
        metrics_dir=settings.metrics_dir,
        interval_s=settings.autoscale_interval_s,
        window_s=settings.autoscale_window_s,
    )
    try:
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        log.debug("supervisor %d stopped", os.getpid())
