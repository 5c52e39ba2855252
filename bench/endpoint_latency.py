"""How long from `endpoint add` returning to the new endpoint answering, on one worker and on all.

Starts a real `modelyard serve --workers N` (SQLite, a temporary home), then 20 times: adds
an endpoint version through the SDK, and from the moment the call returns, polls
`/serve/<endpoint>/<version>` every 5 ms, each request on a NEW connection (a keep-alive
connection stays with one worker, so it could never see the others). Each answer names the
worker's pid. Prints the time to the first 200, and the time until every worker process has
answered 200 (the workers' pids are learnt first, from a warm-up endpoint).

    .venv/bin/python bench/endpoint_latency.py [--workers 2] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS = """
import os

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"pid": os.getpid()}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(url: str, path: str) -> int:
    """The answering worker's pid, 0 for anything but a 200; a new connection every time."""
    try:
        r = httpx.post(f"{url}{path}", json={"x0": 1, "x1": 2}, timeout=10)
    except httpx.HTTPError:
        return 0
    return int(r.json()["pid"]) if r.status_code == 200 else 0


def workers_of(url: str, path: str, count: int) -> set[int]:
    """The pids of the ``count`` workers, from new connections to an endpoint that answers."""
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"saw only workers {pids} of {count}")
        pid = ask(url, path)
        if pid:
            pids.add(pid)
    return pids


def until_served(url: str, path: str, pids: set[int]) -> tuple[float, float]:
    """Seconds from now to the first 200, and to every worker in ``pids`` having answered 200."""
    started = time.monotonic()
    first: float | None = None
    seen: set[int] = set()
    while seen < pids:
        if time.monotonic() - started > 30:
            raise TimeoutError(f"{path}: workers {pids - seen} never answered")
        pid = ask(url, path)
        if pid:
            first = first if first is not None else time.monotonic() - started
            seen.add(pid)
        else:
            time.sleep(0.005)
    assert first is not None
    return first, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    from modelyard.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "warning"}
        modelyard = str(Path(sys.executable).with_name("modelyard"))
        proc = subprocess.Popen(
            [modelyard, "serve", "--port", str(port), "--workers", str(args.workers)],
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not start")
                time.sleep(0.2)
            client = Client(url=url, token=(home / "token").read_text().strip())
            train = runpy.run_path(str(ROOT / "examples/sklearn/train.py"))["train"]
            model = client.upload_model(train(Path(tmp)), name="bench", project="bench", framework="sklearn")
            code = Path(tmp) / "preprocess.py"
            code.write_text(PREPROCESS)
            first, all_workers = [], []
            client.add_endpoint(
                "default", endpoint="warmup", version="1", engine="sklearn", model_id=model["id"],
                preprocess=code,
            )  # fmt: skip
            wait_deadline = time.monotonic() + 60
            while not ask(url, "/serve/warmup/1"):
                if time.monotonic() > wait_deadline:
                    raise TimeoutError("the warm-up endpoint never answered")
                time.sleep(0.05)
            pids = workers_of(url, "/serve/warmup/1", args.workers)
            for run in range(1, args.runs + 1):
                client.add_endpoint(
                    "default",
                    endpoint="bench",
                    version=str(run),
                    engine="sklearn",
                    model_id=model["id"],
                    preprocess=code,
                )
                one, every = until_served(url, f"/serve/bench/{run}", pids)
                first.append(one)
                all_workers.append(every)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} {max(values) * 1000:8.1f}"

    print(f"\nendpoint add -> answering, {args.runs} runs, {args.workers} worker(s)")
    print(f"{'':32} {'median ms':>8} {'max ms':>8}")
    print(f"{'first 200':32} {ms(first)}")
    print(f"{'every worker answered':32} {ms(all_workers)}")
    print("per run (first 200, ms):", " ".join(f"{v * 1000:.0f}" for v in first))


if __name__ == "__main__":
    main()
