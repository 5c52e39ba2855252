"""Several worker processes sharing one Prometheus multiprocess folder: who is there, who died.

A worker killed without shutting down leaves live gauges in the folder; a scrape prunes them
(:func:`prune_dead_workers`) and reports process CPU/memory for every live worker
(:class:`WorkerProcessCollector`), not just the one that answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

_PID_FILE = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_pids(path: str) -> set[int]:
    """Pids that wrote metric files into the multiprocess folder ``path``."""
    pids = set()
    for name in os.listdir(path):
        match = _PID_FILE.search(name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def prune_dead_workers(path: str) -> None:
    """``mark_process_dead`` for workers that died without shutting down (killed, crashed)."""
    from prometheus_client.multiprocess import mark_process_dead

    for pid in worker_pids(path):
        if pid != os.getpid() and not _alive(pid):
            try:
                mark_process_dead(pid, path)
            except OSError:
                pass


class WorkerProcessCollector(Collector):
    """The client's process metrics (CPU, memory, fds) for every live worker, labelled ``pid``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        from prometheus_client import ProcessCollector

        merged: dict[str, Metric] = {}
        for pid in sorted(worker_pids(self.path)):
            if not _alive(pid):
                continue
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in collector.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(merged.values())
