"""Overload: what admitted requests see at 16 / 64 / 256 / 1024 connections, with and without
admission control (``MODELYARD_MAX_INFLIGHT``).

For each run it starts its own ``modelyard serve`` (one worker process, a subprocess), serves
the 50-tree RandomForest of the peers benchmark (``bench/peers/train_models.py``, one JSON row a
request: a CPU-bound model whose calls take turns in the worker pool, so requests queue inside
the replica), and drives it with closed-loop keep-alive clients: each connection sends its next
request as soon as the previous one is answered. The runs:

* ``none``: no admission limit and an unbounded turn queue (the replica before issue 11),
* ``default``: the defaults (``max_inflight`` 256, the turn queue's ``max_queue`` 256),
* ``limit``: ``max_inflight`` = ``--limit`` (32: about the requests/s one worker sustains for
  this model here times the 0.1 s of queueing we accept),
* ``limit-eager``: the same, with clients that ignore ``Retry-After`` and send again at once
  after a 503 (the others wait as told, as a well-behaved client does).

Each level runs ``--warmup`` seconds, then ``--seconds`` measured; printed per level: accepted
req/s (200s per second), p50 / p99 / max latency of the accepted requests, the shed fraction
(503s / all answers), the slowest ``/health/live`` probe (one every 0.2 s) and other errors.

The load generator is a small HTTP/1.1 client on asyncio protocols (uvloop) in its own
process(es): a few tens of µs of CPU per request, where aiohttp costs ~280 µs, so it takes
less of the 2 cores from the server, and it times every request itself, which wrk cannot do per
status code. Raw figures go to ``bench/results/overload-<date>.json``.

    .venv/bin/python bench/overload.py                       # 4 runs x 4 levels x 10 s, ~3.5 min
    .venv/bin/python bench/overload.py --runs none limit --levels 16 1024 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the server -------------------------------------------------------------------------------------
class Server:
    """``modelyard serve`` with one worker in its own process group, serving the RF as ``rf/1``."""

    def __init__(
        self, work: Path, limit: int, options: dict[str, Any], models: Path, row: list[float]
    ) -> None:
        self.home = work / f"home-{time.time_ns()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).with_name("modelyard"))
        env = {
            **os.environ,
            "MODELYARD_HOME": str(self.home),
            "MODELYARD_LOG_LEVEL": "warning",
            "MODELYARD_MAX_INFLIGHT": str(limit),
            "MODELYARD_STATS_INTERVAL_S": "0",
        }
        self.log = (self.home.with_suffix(".log")).open("wb")
        self.proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait(f"{self.url}/health/ready", 90)
        from modelyard.client import Client

        with Client(url=self.url, token=(self.home / "token").read_text().strip()) as client:
            model = client.upload_model(models / "rf.joblib", name="rf", project="bench", framework="sklearn")
            client.add_endpoint(
                "default",
                endpoint="rf",
                version="1",
                engine="sklearn",
                model_id=model["id"],
                preprocess=PEERS / "modelyard_preprocess.py",
                options=options,
            )
        deadline = time.monotonic() + 90
        while True:
            response = httpx.post(f"{self.url}/serve/rf/1", json={"x": row}, timeout=30)
            if response.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rf/1 did not load: {response.status_code} {response.text}")
            time.sleep(0.1)

    def _wait(self, url: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelyard serve exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not ready in {seconds:g} s")

    def cpu_s(self) -> float:
        """utime + stime of the server process so far (its threads included)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def admission(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/status", timeout=10).json().get("admission", {}))

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


# -- the load generator (own process) -----------------------------------------------------------------
class _Connection(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as soon as an answer is complete."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.buffer = b""
        self.need = -1
        self.status = 0
        self.sent = 0.0
        self.finished = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.buffer, self.need = b"", -1
        self.sent = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.status = int(head[9:12])
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            self.need = end + 4 + length
        if len(self.buffer) >= self.need:
            now = time.perf_counter()
            self.run.record(self.status, now - self.sent, now)
            wait = 0.0
            if self.status == 503 and self.run.honor_retry_after:
                head = self.buffer[: self.buffer.find(b"\r\n\r\n")].lower()
                at = head.find(b"retry-after:")
                if at >= 0:
                    end = head.find(b"\r\n", at)
                    wait = float(head[at + 12 : end if end > 0 else None])
            if now + wait >= self.run.stop_at:
                self.finished = True
                self.transport.close()
            elif wait:
                asyncio.get_running_loop().call_later(wait, self.send)
            else:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:  # the server closed it, or it broke
            self.run.dropped += 1
        self.run.closed += 1
        if self.run.closed == self.run.connections and not self.run.done.done():
            self.run.done.set_result(None)


class _Run:
    def __init__(
        self, request: bytes, connections: int, start_at: float, stop_at: float, honor_retry_after: bool
    ) -> None:
        self.request = request
        self.honor_retry_after = honor_retry_after
        self.connections = connections
        self.start_at = start_at
        self.stop_at = stop_at
        self.ok: list[float] = []
        self.statuses: dict[int, int] = {}
        self.dropped = 0
        self.closed = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def record(self, status: int, latency: float, now: float) -> None:
        if not self.start_at <= now <= self.stop_at:
            return  # warm-up, or the queue draining after the measured window
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.ok.append(latency)


def _client(
    port: int, body: bytes, connections: int, warmup: float, seconds: float, honor: bool, out: Any
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> dict[str, Any]:
        request = (
            b"POST /serve/rf/1 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        loop = asyncio.get_running_loop()
        begin = time.perf_counter()
        run = _Run(request, connections, begin + warmup, begin + warmup + seconds, honor)
        refused = 0
        for _ in range(connections):
            try:
                await loop.create_connection(lambda: _Connection(run), "127.0.0.1", port)
            except OSError:
                refused += 1
                run.closed += 1
        await asyncio.wait_for(run.done, warmup + seconds + 120)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "ok": run.ok,
            "statuses": run.statuses,
            "dropped": run.dropped,
            "refused": refused,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }

    out.send(asyncio.run(main()))


def load(
    port: int, body: bytes, connections: int, warmup: float, seconds: float, procs: int, honor: bool
) -> dict[str, Any]:
    """Drive ``connections`` connections split over ``procs`` processes; merged raw results."""
    ctx = mp.get_context("spawn")
    shares = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    pipes, workers = [], []
    for share in shares:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client, args=(port, body, share, warmup, seconds, honor, send))
        proc.start()
        pipes.append(recv)
        workers.append(proc)
    merged: dict[str, Any] = {"ok": [], "statuses": {}, "dropped": 0, "refused": 0, "cpu_s": 0.0}
    for recv, proc in zip(pipes, workers, strict=True):
        if not recv.poll(warmup + seconds + 180):
            for other in workers:
                other.terminate()
            raise RuntimeError(f"a load generator process gave no result (exit code {proc.exitcode})")
        part = recv.recv()
        proc.join()
        merged["ok"].extend(part["ok"])
        for status, count in part["statuses"].items():
            merged["statuses"][status] = merged["statuses"].get(status, 0) + count
        for key in ("dropped", "refused", "cpu_s"):
            merged[key] += part[key]
    return merged


def summarise(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    ok = sorted(raw["ok"])
    n = len(ok)
    answers = sum(raw["statuses"].values())
    shed = raw["statuses"].get(503, 0)

    def pct(q: float) -> float:
        return round(1000 * ok[min(n - 1, int(n * q))], 2) if n else float("nan")

    return {
        "accepted_rps": round(n / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * ok[-1], 2) if n else float("nan"),
        "shed_fraction": round(shed / answers, 4) if answers else 0.0,
        "answers_per_s": round(answers / seconds, 1),
        "other_errors": answers - n - shed + raw["dropped"] + raw["refused"],
        "statuses": {str(k): v for k, v in sorted(raw["statuses"].items())},
        "client_cpu_s": round(raw["cpu_s"], 2),
    }


class HealthProbe:
    """``GET /health/live`` every 0.2 s on a connection of its own while the load runs: it must
    answer 200 however loaded the worker is (health is never counted nor refused)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.wait(0.2):
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/health/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures += 1

    def summary(self) -> dict[str, Any]:
        done = sorted(self.latencies)
        return {
            "probes": len(done) + self.failures,
            "failures": self.failures,
            "p50_ms": round(1000 * done[len(done) // 2], 2) if done else float("nan"),
            "max_ms": round(1000 * done[-1], 2) if done else float("nan"),
        }


# -- the table ------------------------------------------------------------------------------------------
UNBOUNDED = 10**9
"""``max_queue`` of the "none" run: the version's turn queue as unbounded as before issue 11."""


def settings_to_run(limit: int) -> list[dict[str, Any]]:
    """(name, MODELYARD_MAX_INFLIGHT, endpoint options, clients honour Retry-After) per run."""
    return [
        {
            "name": "none",
            "max_inflight": 0,
            "options": {"max_queue": UNBOUNDED},
            "honor": True,
            "what": "no limit, unbounded turn queue (before issue 11)",
        },
        {
            "name": "default",
            "max_inflight": 256,
            "options": {},
            "honor": True,
            "what": "defaults: max_inflight 256, turn queue max_queue 256",
        },
        {
            "name": "limit",
            "max_inflight": limit,
            "options": {},
            "honor": True,
            "what": f"max_inflight {limit} (~ the RF's req/s on this machine x 0.1 s)",
        },
        {
            "name": "limit-eager",
            "max_inflight": limit,
            "options": {},
            "honor": False,
            "what": f"max_inflight {limit}, clients that ignore Retry-After and retry every 503 at once",
        },
    ]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def combine(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a (run, level)'s rounds: medians, and the worst of the maxima."""
    return {
        "accepted_rps": median([c["accepted_rps"] for c in cells]),
        "p50_ms": median([c["p50_ms"] for c in cells]),
        "p99_ms": median([c["p99_ms"] for c in cells]),
        "max_ms": max(c["max_ms"] for c in cells),
        "shed_fraction": median([c["shed_fraction"] for c in cells]),
        "health_max_ms": max(c["health_live"]["max_ms"] for c in cells),
        "health_failures": sum(c["health_live"]["failures"] for c in cells),
        "other_errors": sum(c["other_errors"] for c in cells),
        "p99_ms_rounds": [c["p99_ms"] for c in cells],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 64, 256, 1024], help="connections")
    parser.add_argument("--limit", type=int, default=32, help="MODELYARD_MAX_INFLIGHT of the limited runs")
    parser.add_argument("--runs", nargs="+", default=None, help="names of the runs to do (default all)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over every run and level (medians)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring, per level")
    parser.add_argument("--client-procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/overload-<date>.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    sys.path.insert(0, str(PEERS))
    from train_models import train

    runs = [r for r in settings_to_run(args.limit) if args.runs is None or r["name"] in args.runs]
    work = Path(tempfile.mkdtemp(prefix="modelyard-overload-"))
    samples = train(work / "models")
    row = samples["rf"]["row"]
    body = json.dumps({"x": row}).encode()
    load_avg = os.getloadavg()
    print(
        f"modelyard overload bench: RF 50 trees, `serve --workers 1`, {args.warmup:g} s warm-up + "
        f"{args.seconds:g} s per level, {args.rounds} round(s), closed-loop keep-alive clients "
        f"({args.client_procs} processes), {os.cpu_count()} CPUs shared with the clients, "
        f"load average before {load_avg[0]:.2f}\n"
    )
    for run in runs:
        print(f"- {run['name']}: {run['what']}")
    cells: list[dict[str, Any]] = []
    servers: dict[tuple[int, str], Server] = {}
    try:
        for run in runs:  # one idle server per configuration; the clients' manners need none of their own
            key = (run["max_inflight"], json.dumps(run["options"], sort_keys=True))
            if key not in servers:
                servers[key] = Server(work, run["max_inflight"], run["options"], work / "models", row)
            run["server"] = key
        # interleaved (every run at a level, then the next level; rounds repeat it all), so the
        # machine's drift (2 cores shared with other people's work) falls on every run alike
        for round_ in range(args.rounds):
            for connections in args.levels:
                for run in runs:
                    server = servers[run["server"]]
                    procs = max(1, min(args.client_procs, connections // 16))
                    cpu_before = server.cpu_s()
                    with HealthProbe(server.url) as health:
                        raw = load(
                            server.port, body, connections, args.warmup, args.seconds, procs, run["honor"]
                        )
                    result = summarise(raw, args.seconds)
                    result["server_cpu_s"] = round(server.cpu_s() - cpu_before, 2)
                    result["health_live"] = health.summary()
                    result["load_average"] = os.getloadavg()[0]
                    cells.append(
                        {"run": run["name"], "round": round_, "connections": connections, **result,
                         "admission_after": server.admission()}
                    )  # fmt: skip
                    print(
                        f"  round {round_ + 1}, {connections} connections, {run['name']}: "
                        f"{result['accepted_rps']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
                        f"shed {100 * result['shed_fraction']:.1f} %",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    print(
        "\n| run | connections | accepted req/s | p50 ms | p99 ms | max ms | shed | /health/live max ms "
        "| other errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        for connections in args.levels:
            mine = [c for c in cells if c["run"] == run["name"] and c["connections"] == connections]
            summary = {"run": run["name"], "connections": connections, **combine(mine)}
            rows.append(summary)
            print(
                f"| {run['name']} | {connections} | {summary['accepted_rps']:,.0f} | "
                f"{summary['p50_ms']:.1f} | {summary['p99_ms']:.1f} | {summary['max_ms']:.0f} | "
                f"{100 * summary['shed_fraction']:.1f} % | {summary['health_max_ms']:.0f} | "
                f"{summary['other_errors'] + summary['health_failures']} |"
            )
    print()
    for run in runs:
        by = {r["connections"]: r for r in rows if r["run"] == run["name"]}
        if 16 in by and max(by) > 16:
            top = max(by)
            print(
                f"{run['name']}: p99 of accepted requests at {top} connections = "
                f"{by[top]['p99_ms'] / by[16]['p99_ms']:.1f}x the p99 at 16"
            )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    path = args.json or ROOT / "bench" / "results" / f"overload-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        run.pop("server", None)
    document = {
        "bench": "overload",
        "when": stamp,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_avg,
            "load_average_after": os.getloadavg(),
            "note": "2 cores shared by the servers, the load generator and other people's work",
        },
        "table": rows,
        "cells": cells,
    }
    path.write_text(json.dumps(document, indent=1))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
