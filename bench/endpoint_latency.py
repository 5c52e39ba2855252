"""How long from `endpoint add` returning to the new endpoint answering.

Starts a real `modelyard serve --workers N` (SQLite, a temporary home), then 20 times: adds
an endpoint version through the SDK, and from the moment the call returns, polls
`/serve/<endpoint>/<version>` every 5 ms. Prints the time to the first 200 and the time until
10 requests in a row answered (with several workers, that is every worker serving it).

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
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until_ok(http: httpx.Client, path: str, in_a_row: int) -> float:
    started = time.monotonic()
    streak = 0
    while time.monotonic() - started < 30:
        if http.post(path, json={"x0": 1, "x1": 2}).status_code == 200:
            streak += 1
            if streak >= in_a_row:
                return time.monotonic() - started
        else:
            streak = 0
            time.sleep(0.005)
    raise TimeoutError(path)


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
            with httpx.Client(base_url=url, timeout=10) as http:
                for run in range(1, args.runs + 1):
                    client.add_endpoint(
                        "default",
                        endpoint="bench",
                        version=str(run),
                        engine="sklearn",
                        model_id=model["id"],
                        preprocess=code,
                    )
                    first.append(until_ok(http, f"/serve/bench/{run}", 1))
                    all_workers.append(first[-1] + until_ok(http, f"/serve/bench/{run}", 10))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} {max(values) * 1000:8.1f}"

    print(f"\nendpoint add -> answering, {args.runs} runs, {args.workers} worker(s)")
    print(f"{'':32} {'median ms':>8} {'max ms':>8}")
    print(f"{'first 200':32} {ms(first)}")
    print(f"{'10 in a row (every worker)':32} {ms(all_workers)}")
    print("per run (first 200, ms):", " ".join(f"{v * 1000:.0f}" for v in first))


if __name__ == "__main__":
    main()
