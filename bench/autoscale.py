"""Autoscaling on one machine: worker processes vs. offered load over time.

    python bench/autoscale.py                       # ramp up, hold, ramp down, idle (~75 s)
    python bench/autoscale.py --max-workers 3 --target 2 --work-ms 3

Starts ``modelyard serve --workers auto --min-workers 1 --max-workers N`` (SQLite, a temp home),
deploys a small sklearn model whose Preprocess burns ``--work-ms`` of CPU per request, then runs
closed-loop clients (each sends its next request when the last answered): the offered load is
the number of concurrent clients. Every second it prints the offered load, the worker processes
the server runs (its children, counted from /proc; a retiring worker counts until it has
drained), throughput, median latency and errors, then the curve's summary.

:class:`AutoscaleRun` is also what ``tests/test_autoscale_e2e.py`` drives, with a short profile.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
PREPROCESS = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        n = 0
        for i in range(SPIN):  # CPU work standing in for feature engineering
            n += i & 7
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist()}
"""
RAMP = (
    [(4.0, c) for c in (1, 2, 4, 8, 12, 16)]
    + [(10.0, 16)]
    + [(4.0, c) for c in (12, 8, 4, 2, 1)]
    + [(15.0, 0)]
)
"""(seconds, concurrent clients): ramp up, hold, ramp down, idle."""


def spin_for(ms: float) -> int:
    """Loop iterations of PREPROCESS's spin that take about ``ms`` milliseconds here."""
    n = 200_000
    started = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i & 7
    per = (time.perf_counter() - started) / n
    return max(1, int(ms / 1000 / per))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> int:
    """Worker processes of the server ``pid``: its children started by multiprocessing's spawn."""
    count = 0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    for kid in kids:
        try:
            cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            count += 1
    return count


@dataclass
class Sample:
    t: float
    offered: int
    workers: int
    done: int
    errors: int
    p50_ms: float | None


@dataclass
class AutoscaleRun:
    """A ``modelyard serve --workers auto`` process, a model on it, and closed-loop clients."""

    root: Path
    min_workers: int = 1
    max_workers: int = 4
    target_inflight: float = 4.0
    down_delay_s: float = 5.0
    up_cooldown_s: float = 2.0
    work_ms: float = 4.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    offered: int = 0
    done: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def start(self, timeout: float = 60) -> None:
        home = self.root / "home"
        env = {
            **os.environ,
            "MODELYARD_HOME": str(home),
            "MODELYARD_AUTOSCALE_TARGET_INFLIGHT": str(self.target_inflight),
            "MODELYARD_AUTOSCALE_DOWN_DELAY_S": str(self.down_delay_s),
            "MODELYARD_AUTOSCALE_UP_COOLDOWN_S": str(self.up_cooldown_s),
            "MODELYARD_STATS_INTERVAL_S": "0",
            "MODELYARD_LOG_LEVEL": "info",
        }
        env.pop("MODELYARD_SETTINGS_JSON", None)
        cmd = [MODELYARD, "serve", "--port", str(self.port), "--workers", "auto",
               "--min-workers", str(self.min_workers), "--max-workers", str(self.max_workers)]  # fmt: skip
        log = open(self.log_file, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log_file.read_text()[-3000:]}")
            time.sleep(0.1)
        self._deploy(home, deadline)

    def _deploy(self, home: Path, deadline: float) -> None:
        import joblib
        import numpy as np
        from sklearn.linear_model import LinearRegression

        from modelyard.client import Client

        model_path = self.root / "lin.pkl"
        x = np.random.default_rng(0).normal(size=(50, 2))
        joblib.dump(LinearRegression().fit(x, x.sum(axis=1)), model_path)
        code = self.root / "pre.py"
        code.write_text(PREPROCESS.replace("SPIN", str(spin_for(self.work_ms))))
        token = (home / "token").read_text().strip()
        with Client(self.url, token=token) as c:
            model = c.upload_model(model_path, name="lin", project="bench", framework="sklearn")
            c.add_endpoint("default", "lin", engine="sklearn", model_id=model["id"], preprocess=code)
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"{self.url}/serve/lin", json={"x0": 1, "x1": 2}, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the model did not come up: {self.log_file.read_text()[-3000:]}")

    # -- load ----------------------------------------------------------------------------------------
    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                if index >= self.offered:
                    time.sleep(0.02)
                    continue
                started = time.perf_counter()
                try:
                    response = http.post("/serve/lin", json={"x0": index, "x1": 1.0})
                    ok = response.status_code == 200
                    kind = str(response.status_code)
                except httpx.HTTPError as exc:
                    ok, kind = False, type(exc).__name__
                elapsed = time.perf_counter() - started
                with self._lock:
                    if ok:
                        self.done += 1
                        self.latencies.append(elapsed)
                    else:
                        self.errors += 1
                        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def run(self, profile: list[tuple[float, int]], echo: bool = True) -> list[Sample]:
        """Offer ``profile``'s load, sampling every second; returns the samples."""
        peak = max(c for _, c in profile)
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(peak)]
        for t in self._threads:
            t.start()
        assert self.proc is not None
        started = time.monotonic()
        ends = []
        total = 0.0
        for seconds, clients in profile:
            total += seconds
            ends.append((total, clients))
        if echo:
            print(f"{'t s':>5} {'offered':>7} {'workers':>7} {'req/s':>7} {'p50 ms':>7} {'errors':>6}")
        last_done = 0
        next_tick = started
        while True:
            now = time.monotonic() - started
            current = next((c for end, c in ends if now < end), None)
            if current is None:
                break
            self.offered = current
            next_tick += 1.0
            time.sleep(max(0.0, next_tick - time.monotonic()))
            with self._lock:
                done, errors, lat = self.done, self.errors, self.latencies
                self.latencies = []
            sample = Sample(
                t=round(time.monotonic() - started, 1),
                offered=current,
                workers=children(self.proc.pid),
                done=done - last_done,
                errors=errors,
                p50_ms=statistics.median(lat) * 1000 if lat else None,
            )
            last_done = done
            self.samples.append(sample)
            if echo:
                p50 = f"{sample.p50_ms:7.1f}" if sample.p50_ms is not None else f"{'-':>7}"
                print(
                    f"{sample.t:5.0f} {sample.offered:7d} {sample.workers:7d} {sample.done:7d} {p50} "
                    f"{errors:6d}"
                )
        self.offered = 0
        return self.samples

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def scale_events(self) -> list[str]:
        return [
            line for line in self.log_file.read_text(errors="replace").splitlines() if "autoscale:" in line
        ]


def summary(samples: list[Sample], min_workers: int) -> str:
    """Peak workers, when load first asked for more and when the count came back to the minimum."""
    peak = max(s.workers for s in samples)
    at_peak = next(s.t for s in samples if s.workers == peak)
    first_up = next((s.t for s in samples if s.workers > min_workers), None)
    idle_from = next((s.t for i, s in enumerate(samples) if all(x.offered == 0 for x in samples[i:])), None)
    back = None
    if idle_from is not None:
        back = next((s.t for s in samples if s.t >= idle_from and s.workers == min_workers), None)
    served = sum(s.done for s in samples)
    lines = [
        f"peak {peak} workers (first at t={at_peak:.0f} s); first scale-up at t={first_up} s",
        f"idle from t={idle_from} s, back to {min_workers} worker(s) at t={back} s",
        f"{served} requests answered, {samples[-1].errors} errors",
    ]
    by_load: dict[int, list[int]] = {}
    for s in samples:
        by_load.setdefault(s.offered, []).append(s.workers)
    lines.append(
        "workers by offered load (max seen): "
        + ", ".join(f"{load}→{max(ws)}" for load, ws in sorted(by_load.items()))
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--min-workers", type=int, default=1)
    parser.add_argument("--target", type=float, default=4.0, help="in-flight requests per worker")
    parser.add_argument("--down-delay", type=float, default=5.0, help="seconds before scaling down")
    parser.add_argument("--work-ms", type=float, default=4.0, help="CPU per request in the Preprocess")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelyard-autoscale-"))
    run = AutoscaleRun(
        root,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        target_inflight=args.target,
        down_delay_s=args.down_delay,
        work_ms=args.work_ms,
    )
    try:
        run.start()
        print(
            f"modelyard serve --workers auto --min-workers {args.min_workers} --max-workers "
            f"{args.max_workers} (target {args.target:g} in flight per worker, scale-down delay "
            f"{args.down_delay:g} s, {args.work_ms:g} ms CPU per request, {os.cpu_count()} CPUs; "
            "workers include ones draining after a scale-down)"
        )
        samples = run.run(RAMP)
        print(summary(samples, args.min_workers))
        if run.error_kinds:
            print(f"errors by kind: {run.error_kinds}")
        for line in run.scale_events():
            print("  " + line.split("modelyard.autoscale: ", 1)[-1])
    finally:
        run.close()


if __name__ == "__main__":
    main()
