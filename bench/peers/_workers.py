"""How many requests each modelyard worker answered, read from the workers' own Prometheus files.

``modelyard serve --workers N`` shares metrics through prometheus_client's multiprocess folder:
one ``counter_<pid>.db`` per worker. Reading those files per pid tells how the load generator's
keep-alive connections were spread over the workers, at no cost on the request path (a response
header naming the pid would cost every request). Workers flush their buffered counts every
0.5 s, so a reading taken :data:`FLUSH_S` after the load stopped is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FLUSH_S = 0.8
"""Wait after a run before reading: longer than the workers' 0.5 s metrics flush."""

COUNTER = "modelyard_requests_total"


def requests_by_pid(metrics_dir: Path) -> dict[int, float]:
    """``pid -> modelyard_requests_total`` summed over endpoints and codes, one entry per worker file."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, float] = {}
    for path in Path(metrics_dir).glob("counter_*.db"):
        try:
            pid = int(path.stem.split("_", 1)[1])
            values = list(MmapedDict.read_all_values_from_file(str(path)))
        except (ValueError, OSError):  # a file being created: counted on the next reading
            continue
        total = 0.0
        for key, value, *_ in values:
            if json.loads(key)[1] == COUNTER:
                total += value
        counts[pid] = total
    return counts


def spread(before: dict[int, float], after: dict[int, float]) -> list[int]:
    """Requests each worker answered between two readings, largest first (workers that answered none
    included, so ``[16000, 0]`` shows one idle worker)."""
    return sorted((round(after[pid] - before.get(pid, 0.0)) for pid in after), reverse=True)


def _port_sockets(port: int) -> dict[str, str]:
    """Socket inode -> TCP state (``01`` established, ``0A`` listening) of sockets on local ``port``."""
    states: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] in ("01", "0A") and int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[fields[9]] = fields[3]
    return states


def connections_by_pid(pids: set[int], port: int) -> dict[int, int]:
    """How many client connections to ``port`` each of ``pids`` holds open now (from /proc); only
    processes holding a socket on the port (a worker's listening one, at least) are listed.

    This is what the kernel and the workers' accept loops decided, before any CPU contention:
    ``{w1: 16, w2: 0}`` means one worker serves every keep-alive connection of the run.
    """
    states = _port_sockets(port)
    counts: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone
            continue
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:  # closed meanwhile (the listing's own fd, in this process)
                pass
        mine = [states[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in states]
        if mine:
            counts[pid] = mine.count("01")
    return counts
