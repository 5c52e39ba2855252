"""One batching executor behind several HTTP workers, against each worker batching on its own.

``serve --workers N`` gives every worker process its own copy of each model and its own
batcher, so concurrent requests are split N ways before they are batched. For a GPU that
means N CUDA contexts and N model copies taking turns, and batches N times smaller. The
executor tier puts the model in ONE ``modelyard inference --workers 1`` process (its own
service, batching on) and lets the front workers forward to it with the ``triton`` engine
(OIP binary tensors over a local keep-alive connection, no pickling): the batches are formed
over every front worker's requests.

It starts, as real processes on free ports: ``modelyard serve --workers N`` (front and control
plane) and ``modelyard inference --service executor --workers 1`` (the executor), serves an
MLP (64 → 256 → 256 → 10; ONNX, or TorchScript with ``--engine pytorch``) as

* ``direct``: in the front's service, batching on in each front worker;
* ``tiered``: the front's ``triton`` endpoint forwarding each request to the executor's ``mlp``
  (batching on in the executor only);
* ``tiered_batched``: the same with batching on in the front's ``triton`` endpoint too, so each
  front worker forwards one stacked call per batch and the executor merges the workers' batches,

and, for each concurrency, measures requests/s and p50/p99 (one row per OIP binary request,
closed-loop clients in their own process) and the mean batch sizes formed (requests per batch
in the front, and forwarded calls per batch in the executor; from their batch-size
histograms). Every answer of a warm-up round is checked against the model computed here.

    .venv/bin/python bench/executor_tier.py [--workers 2] [--clients 16 64 256] [--seconds 5]

On a CPU machine the tier costs a local HTTP hop per forwarded call, which the 2 cores of
the development machine pay for (batching in the front makes it one hop a batch); its point
is a GPU, where one process must own the device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.batching import load, mlp_onnx, mlp_torchscript, mlp_weights, oip_request  # noqa: E402
from tests.monitoring.tools import samples, value  # noqa: E402
from tests.servers import free_port, stop_process_group  # noqa: E402

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def mlp_reference(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float32)
    layers = mlp_weights()
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def _wait_up(url: str, what: str) -> None:
    wait_until(lambda: httpx.get(url).status_code == 200, 90, f"{what} did not start ({url})")


class Tier:
    """The front (``serve``) and the executor (``inference``) processes, and the API."""

    def __init__(self, home: Path, workers: int) -> None:
        self.front_port, self.exec_port, self.exec_grpc_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.front_port}"
        self.exec_url = f"http://127.0.0.1:{self.exec_port}"
        self.env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_URL": self.url}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.logs = [open(home.parent / name, "w") for name in ("front.log", "executor.log")]  # noqa: SIM115
        self.procs: list[subprocess.Popen[Any]] = []
        try:
            self._start(["serve", "--port", str(self.front_port), "--workers", str(workers)], self.logs[0])
            _wait_up(f"{self.url}/api/health", "the front")
            token = (home / "token").read_text().strip()
            self.api = httpx.Client(
                base_url=f"{self.url}/api", headers={"authorization": f"Bearer {token}"}, timeout=60
            )
            self.api.post("/services", json={"name": "executor"}).raise_for_status()
            self._start(
                ["inference", "--service", "executor", "--control-plane", self.url,
                 "--port", str(self.exec_port), "--grpc-port", str(self.exec_grpc_port), "--workers", "1"],
                self.logs[1],
            )  # fmt: skip
            _wait_up(f"{self.exec_url}/health/live", "the executor")
        except BaseException:
            self.close()  # never leave a started server behind
            raise

    def _start(self, args: list[str], log: Any) -> None:
        self.procs.append(
            subprocess.Popen(
                [MODELYARD, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def model(self, path: Path, framework: str) -> str:
        sha = self.api.post("/artifacts", content=path.read_bytes()).json()["sha256"]
        body = {"name": "mlp", "project": "bench", "framework": framework, "artifact_sha256": sha,
                "filename": path.name}  # fmt: skip
        return str(self.api.post("/models", json=body).json()["id"])

    def endpoint(
        self, service: str, name: str, engine: str, options: dict[str, Any], model_id: str | None
    ) -> None:
        body: dict[str, Any] = {"endpoint": name, "engine": engine, "options": options}
        if model_id is not None:
            body["model_id"] = model_id
        self.api.post(f"/services/{service}/endpoints", json=body).raise_for_status()

    def metrics(self, base: str) -> dict[str, float]:
        return samples(httpx.get(f"{base}/metrics", timeout=10).text)

    def close(self) -> None:
        if hasattr(self, "api"):
            self.api.close()
        for proc in reversed(self.procs):
            stop_process_group(proc, 20)
        for log in self.logs:
            log.close()


def check_answers(url: str, input_name: str, rounds: int = 40) -> None:
    """Distinct rows through ``url`` on fresh connections (any worker): each answer is its own row's."""
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        row = rng.normal(size=(1, 64)).astype(np.float32)
        body, headers = oip_request(input_name, "FP32", row)
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        response.raise_for_status()
        length = int(response.headers["inference-header-content-length"])
        header = orjson.loads(response.content[:length])
        out = np.frombuffer(response.content[length:], dtype=np.float32).reshape(
            header["outputs"][0]["shape"]
        )
        np.testing.assert_allclose(out, mlp_reference(row), rtol=1e-4, atol=1e-4)


def mean_batch(before: dict[str, float], after: dict[str, float], endpoint: str) -> str:
    """Requests per batch of ``endpoint`` between two scrapes (``-``: it did not batch)."""
    count = value(after, "modelyard_batch_size_count", endpoint=endpoint) - value(
        before, "modelyard_batch_size_count", endpoint=endpoint
    )
    total = value(after, "modelyard_batch_size_sum", endpoint=endpoint) - value(
        before, "modelyard_batch_size_sum", endpoint=endpoint
    )
    return f"{total / count:.1f}" if count else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="front worker processes")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per cell")
    parser.add_argument("--engine", choices=["onnx", "pytorch"], default="onnx")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http", help="front → executor")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="modelyard-tier-"))
    (tmp / "home").mkdir()
    path = mlp_onnx(tmp / "mlp.onnx") if args.engine == "onnx" else mlp_torchscript(tmp / "mlp.pt")
    input_name = "X" if args.engine == "onnx" else "x"
    tier = Tier(tmp / "home", args.workers)
    try:
        model_id = tier.model(path, args.engine)
        batching = {"max_batch_size": args.max_batch_size, "max_batch_delay_ms": args.delay_ms,
                    "max_queue": max(1024, 4 * args.max_batch_size)}  # fmt: skip
        tier.endpoint("default", "direct", args.engine, batching, model_id)
        tier.endpoint("executor", "mlp", args.engine, batching, model_id)
        wait_until(
            lambda: httpx.get(f"{tier.exec_url}/v2/models/mlp/ready").status_code == 200, 120, "executor mlp"
        )
        remote = tier.exec_url if args.protocol == "http" else f"grpc://127.0.0.1:{tier.exec_grpc_port}"
        forward = {"url": remote, "model_name": "mlp"}
        tier.endpoint("default", "tiered", "triton", forward, None)
        tier.endpoint("default", "tiered_batched", "triton", {**forward, **batching}, None)
        for name in ("direct", "tiered", "tiered_batched"):
            url = f"{tier.url}/v2/models/{name}/infer"
            wait_until(
                lambda url=url: all(httpx.post(url, content=b"{").status_code == 400 for _ in range(10)),
                120,
                f"{name} on every front worker",
            )
            check_answers(url, input_name)
        print(
            f"modelyard executor tier ({args.engine} MLP, max batch {args.max_batch_size}, "
            f"delay {args.delay_ms:g} ms, {args.seconds:g} s per cell): front `serve --workers "
            f"{args.workers}`, executor `inference --workers 1`, forwarding over {args.protocol}\n"
        )
        print("| path | clients | req/s | p50 ms | p99 ms | front batch | executor batch | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        body, headers = oip_request(input_name, "FP32", np.ones((1, 64), dtype=np.float32))
        watched = {
            "direct": [(tier.url, "direct")],
            "tiered": [(tier.url, "tiered"), (tier.exec_url, "mlp")],
            "tiered_batched": [(tier.url, "tiered_batched"), (tier.exec_url, "mlp")],
        }
        for name, places in watched.items():
            for clients in args.clients:
                time.sleep(1.0)  # let the workers flush their buffered metrics
                before = [tier.metrics(base) for base, _ in places]
                stats = load(f"{tier.url}/v2/models/{name}/infer", body, headers, clients, args.seconds)
                time.sleep(1.0)
                means = [
                    mean_batch(before_one, tier.metrics(base), endpoint)
                    for before_one, (base, endpoint) in zip(before, places, strict=True)
                ]
                front, executor = means[0], (means[1] if len(means) > 1 else "-")
                print(
                    f"| {name} | {clients} | {stats['rps']:,.0f} | {stats['p50_ms']:.2f} | "
                    f"{stats['p99_ms']:.2f} | {front} | {executor} | {stats['errors']} |",
                    flush=True,
                )
    finally:
        tier.close()


if __name__ == "__main__":
    main()
