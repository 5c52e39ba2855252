"""Where a one-row request's CPU goes on ``/v2`` against ``/serve``, the same endpoint, no sockets.

Serves the iris model of the peers benchmark in one modelyard process (control plane + replica,
SQLite, a temporary home) under uvicorn in a thread, registers the endpoints over HTTP, then runs
the requests by calling the ASGI app directly inside the server's own event loop: no socket, no
HTTP parser, no load generator, so what is measured is modelyard's data plane alone, and a noisy
machine moves both paths alike (they alternate, rep after rep).

* ``/v2``     the peers' V2 JSON body ``{"inputs": [{"name": "x", "shape": [1, 4], "datatype":
  "FP64", "data": [...]}]}`` on endpoint ``iris`` (no hooks; declared input x, output y);
* ``/serve``  ``[[...]]`` (one row as a JSON list of rows) on the same endpoint;
* ``/serve+hooks``  ``{"x": [...]}`` on ``iris_x``, through ``modelyard_preprocess.py`` (the
  README's earlier row).

Prints CPU µs per request (process time over N requests, C at a time) per path, and with
``--profile`` the functions with the most own time for each path (cProfile, in the loop thread;
``inline_max_ms`` is 5 so the endpoint's chain runs on the loop under the profiler's overhead too).

    .venv/bin/python bench/peers/profile_oip.py [--requests 5000] [--concurrency 16] [--reps 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Request:
    """One path and body, as ready-made ASGI scope and messages."""

    def __init__(self, name: str, path: str, body: bytes, port: int) -> None:
        self.name, self.path, self.body = name, path, body
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", f"127.0.0.1:{port}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", port),
        }
        self.message = {"type": "http.request", "body": body, "more_body": False}

    async def call(self, app: Any) -> int:
        status = 0

        async def receive() -> dict:
            return self.message

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(self.scope), receive, send)
        return status


async def drive(app: Any, request: Request, total: int, concurrency: int) -> float:
    """CPU seconds (whole process) per request for ``total`` requests, ``concurrency`` at a time."""
    per_task = total // concurrency

    async def one_client() -> None:
        for _ in range(per_task):
            status = await request.call(app)
            if status != 200:
                raise RuntimeError(f"{request.name}: status {status}")

    started = time.process_time()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return (time.process_time() - started) / (per_task * concurrency)


async def profile(app: Any, request: Request, total: int, concurrency: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    await drive(app, request, total, concurrency)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def start_server(app: Any, port: int) -> tuple[Any, threading.Thread, asyncio.AbstractEventLoop]:
    import uvicorn

    class Quiet(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
            pass

    server = Quiet(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return server, thread, loops[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per path per rep")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="alternating reps per path (median)")
    parser.add_argument("--profile", action="store_true", help="also cProfile each path once")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument(
        "--stub-model",
        action="store_true",
        help="replace the model's predict by a constant (what is left is modelyard's own cost)",
    )
    parser.add_argument(
        "--paths", default="/v2,/serve,/serve+hooks", help="which paths to drive (e.g. /v2 alone, for py-spy)"
    )
    args = parser.parse_args()

    from modelyard.client import Client
    from modelyard.server import create_all_in_one_app, prepare_control_plane
    from modelyard.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="modelyard-profile-"))
    samples = json.loads(
        __import__("subprocess")
        .run(
            [sys.executable, str(HERE / "train_models.py"), str(tmp / "models")],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout
    )
    row = samples["iris"]["row"]
    port = free_port()
    # inline_max_ms 5: the chain (110 us of predict) stays on the loop even under cProfile's
    # overhead, so both paths run the same way and the loop thread's profile holds all of it
    settings = Settings(
        home=tmp / "home", port=port, host="127.0.0.1", log_level="warning", inline_max_ms=5.0
    )
    prepare_control_plane(settings)
    app = create_all_in_one_app(settings)
    server, thread, loop = start_server(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url=url, token=(tmp / "home" / "token").read_text().strip()) as client:
            model = client.upload_model(
                tmp / "models" / "iris.joblib", name="iris", project="bench", framework="sklearn"
            )
            common = {"version": "1", "engine": "sklearn", "model_id": model["id"]}
            client.add_endpoint(
                "default",
                endpoint="iris",
                inputs=[{"name": "x", "dtype": "float64", "shape": [-1, len(row)]}],
                outputs=[{"name": "y", "dtype": "int64", "shape": [-1]}],
                **common,
            )
            client.add_endpoint(
                "default", endpoint="iris_x", preprocess=HERE / "modelyard_preprocess.py", **common
            )
        v2_body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
        ).encode()
        requests = [
            Request("/v2", "/v2/models/iris/infer", v2_body, port),
            Request("/serve", "/serve/iris/1", json.dumps([row]).encode(), port),
            Request("/serve+hooks", "/serve/iris_x/1", json.dumps({"x": row}).encode(), port),
        ]
        requests = [r for r in requests if r.name in args.paths.split(",")]
        deadline = time.monotonic() + 60
        for r in requests:  # every path answers over HTTP first (and the right class)
            while True:
                answer = httpx.post(f"{url}{r.path}", content=r.body, timeout=10)
                if answer.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{r.name}: {answer.status_code} {answer.text}")
                time.sleep(0.2)
            print(f"{r.name:13} {r.path:24} body {len(r.body):3d} B -> {answer.text[:120]}")

        if args.stub_model:  # the same constant answer on every path: sklearn's ~100 us out of the way
            answer_y = np.asarray([samples["iris"]["label"]])
            for endpoint in ("iris", "iris_x"):
                engine = app.inference.dataplane.table.resolve(endpoint, "1").engine
                engine._fn = lambda data, _y=answer_y: _y
            print("model stubbed: predict returns a constant")

        def run(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        for r in requests:  # warm-up: inline decision made, caches warm
            run(drive(app, r, 2000, args.concurrency))
        cpu: dict[str, list[float]] = {r.name: [] for r in requests}
        for _ in range(args.reps):
            for r in requests:
                cpu[r.name].append(run(drive(app, r, args.requests, args.concurrency)))
        load = os.getloadavg()[0]
        print(
            f"\nCPU per request, {args.requests} requests x {args.reps} reps, {args.concurrency} at a "
            f"time, in-process ASGI (load average {load:.2f})"
        )
        base = statistics.median(cpu.get("/serve") or next(iter(cpu.values())))
        for name, values in cpu.items():
            med = statistics.median(values)
            spread = f"(min {min(values) * 1e6:.1f}, max {max(values) * 1e6:.1f})"
            print(f"  {name:13} {med * 1e6:7.1f} us  {spread}  -> {base / med:.0%} of /serve's rate")
        if args.profile:
            for r in requests[:2]:
                print(f"\n==== cProfile {r.name} ({args.requests} requests), own time ====")
                print(run(profile(app, r, args.requests, args.concurrency, args.top)))
    finally:
        server.should_exit = True
        thread.join(30)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
