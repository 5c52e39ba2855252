"""The peer benchmark's report and per-worker readings, without servers (fast).

The tables are computed from the saved JSON, so a committed raw result can be re-read; these
check the numbers the README quotes come out right: the equal-footing ratio (modelyard's best
``/v2`` over the best peer, median and round by round), the start-to-start spread against the
10 % goal, and the per-worker counts read from real Prometheus multiprocess files and /proc.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "peers"))

import _report  # noqa: E402
import _workers  # noqa: E402


def _row(rnd: int, system: str, config: str, rps: float, **extra: object) -> dict:
    return {
        "round": rnd,
        "system": system,
        "config": config,
        "model": "iris",
        "connections": 16,
        "rps": rps,
        "p50_ms": 5.0,
        "p99_ms": 9.0,
        "errors": 0,
        "requests": int(rps * 10),
        "seconds": 10.0,
        "server_cpu_s": 1.0,
        "client_cpu_s": 0.1,
        "cpu_ms_per_request": 0.3,
        "error_detail": {},
        **extra,
    }


def _result(rows: list[dict]) -> dict:
    return {
        "date": "2026-12-02T10:00:00",
        "versions": {"modelyard": "0.1 (abc)", "pytriton": "0.7.0"},
        "machine": {"cpus": 2, "loadavg_start": 0.1, "loadavg_end": 0.2},
        "settings": {
            "duration_s": 10,
            "warmup_s": 3,
            "rounds": 2,
            "concurrency": [16],
            "load": "/usr/bin/wrk",
            "modelyard_batching": None,
        },
        "ceiling": {"iris": {"rows1_per_s": 9000.0, "rows64_per_s": 400000.0}},
        "rows": rows,
        "failures": {},
    }


def test_equal_footing_ratio_uses_v2_and_the_best_peer_round_by_round() -> None:
    rows = [
        _row(1, "modelyard", "w2 /v2", 6000, per_worker=[30000, 30000], connections_per_worker=[8, 8]),
        _row(2, "modelyard", "w2 /v2", 6300, per_worker=[32000, 31000], connections_per_worker=[9, 7]),
        _row(1, "modelyard", "w2 /serve", 9000),  # faster, but not the equal-footing row
        _row(2, "modelyard", "w2 /serve", 9000),
        _row(1, "pytriton", "instances=1", 1500),
        _row(2, "pytriton", "instances=1", 1400),
        _row(1, "pytriton", "instances=2", 2000),
        _row(2, "pytriton", "instances=2", 2100),
        _row(1, "mlserver", "parallel_workers=0", 1000),
        _row(2, "mlserver", "parallel_workers=0", 1000),
    ]
    text = _report.render(_result(rows))
    # median /v2 6150 over PyTriton's best config's median 2050 = 3.00x; rounds: 3.00x, 3.00x
    assert "= 3.00x the best peer, pytriton instances=2 2050, per round 3.00-3.00x" in text, text
    assert "6.15x mlserver" in text
    assert "my/this" in text and "versions: modelyard 0.1 (abc), pytriton 0.7.0" in text
    assert "same workers: iris c=16 w2: 68%" in text  # /v2 6150 over /serve 9000
    assert "req/s per start: 6000 6300  max/min 1.05 ok" in text
    assert "connections [8, 8] [9, 7]; requests [30000, 30000] [32000, 31000]" in text


def test_a_start_spread_over_ten_percent_is_flagged() -> None:
    rows = [_row(1, "modelyard", "w2 /v2", 1580), _row(2, "modelyard", "w2 /v2", 2499)]
    assert "max/min 1.58 OVER" in _report.render(_result(rows))


def test_requests_by_pid_reads_each_workers_prometheus_file(tmp_path: Path) -> None:
    code = (
        "from prometheus_client import Counter, CollectorRegistry\n"
        "c = Counter('modelyard_requests', 'r', ['endpoint', 'code'], registry=CollectorRegistry())\n"
        "c.labels('a', '200').inc(5); c.labels('b', '404').inc(2)\n"
        "Counter('modelyard_other', 'o', registry=CollectorRegistry()).inc(100)\n"
        "import os; print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [
        int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
        for _ in range(2)
    ]
    counts = _workers.requests_by_pid(tmp_path)
    assert counts == {pids[0]: 7.0, pids[1]: 7.0}  # both label sets, not the other counter
    assert _workers.spread({pids[0]: 2.0}, counts) == [7, 5]


def test_connections_by_pid_counts_the_connections_a_process_holds() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            # this process holds the listening socket, the 3 accepted ones (local port = port) and
            # the 3 client ends (an ephemeral local port: not counted)
            assert _workers.connections_by_pid({os.getpid()}, port) == {os.getpid(): 3}
            assert _workers.connections_by_pid({os.getpid()}, port + 1 if port < 65535 else 1) == {}
        finally:
            for s in clients + accepted:
                s.close()
