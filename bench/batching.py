"""Dynamic batching: offline model throughput vs modelyard over HTTP, batching off and on.

For each model it prints, in one run:

* offline: the engine alone at the max batch size (rows/s), and at batch 1;
* HTTP (OIP binary tensors, one row per request): throughput, p50 and p99 latency at
  1/16/64/256 concurrent clients, with batching off and on, and the mean batch size formed.

CPU (default): a small MLP (64 → 256 → 256 → 10) as ONNX (onnxruntime) and as TorchScript
(PyTorch). GPU (``--device cuda``): ResNet-50 (built here in plain torch, random weights),
fp16, channels_last; each request is one uint8 224x224x3 image, normalised on the device.

The server is a real ``modelyard serve`` app (control plane + replica) under uvicorn in this
process; the load comes from a separate process (aiohttp), so the client does not share the
server's GIL.

    .venv/bin/python bench/batching.py                 # CPU table
    .venv/bin/python bench/batching.py --device cuda   # GPU table (needs CUDA)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]


# -- models ------------------------------------------------------------------------------------------
def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [64, 256, 256, 10]
    return [
        (rng.normal(0, 0.1, (a, b)).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32))
        for a, b in itertools.pairwise(sizes)
    ]


def mlp_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "X"
    layers = mlp_weights()
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"M{i}"]),
            helper.make_node("Add", [f"M{i}", f"B{i}"], [f"A{i}" if i < len(layers) - 1 else "Y"]),
        ]
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"A{i}"], [f"R{i}"]))
            prev = f"R{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def mlp_torchscript(path: Path) -> Path:
    import torch

    layers: list[Any] = []
    for i, (w, b) in enumerate(mlp_weights()):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear, torch.nn.ReLU()] if i < 2 else [linear]
    model = torch.nn.Sequential(*layers).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 64)), str(path))
    return path


def resnet50_torchscript(path: Path, device: str) -> Path:
    """ResNet-50 (torchvision's layout, random weights) behind uint8 NHWC → normalised fp16 NCHW."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            return torch.relu(self.body(x) + self.down(x))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks: list[nn.Module] = []
            cin = 64
            for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for j in range(count):
                    blocks.append(Bottleneck(cin, width, stride if j == 0 else 1))
                    cin = width * 4
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )  # fmt: skip
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(2048, 1000)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, images: Any) -> Any:  # uint8 [N, 224, 224, 3]
            x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            x = self.blocks(self.stem(x))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    model = ResNet50().eval().to(device).half().to(memory_format=torch.channels_last)
    example = torch.zeros(1, 224, 224, 3, dtype=torch.uint8, device=device)
    with torch.inference_mode():
        traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(path))
    return path


# -- server --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``modelyard serve`` (one process) under uvicorn in a thread."""

    def __init__(self, home: Path) -> None:
        import uvicorn

        from modelyard.server import create_all_in_one_app
        from modelyard.settings import Settings

        self.settings = Settings(home=home, sync_wait_s=5, max_body_bytes=64 << 20, _env_file=None)  # type: ignore[call-arg]
        self.app = create_all_in_one_app(self.settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        token = self.settings.token_file().read_text().strip()
        self.api = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=120)

    def model(self, path: Path, framework: str) -> str:
        sha = self.api.post("/api/artifacts", content=path.read_bytes()).json()["sha256"]
        body = {"name": path.stem, "project": "bench", "framework": framework, "artifact_sha256": sha,
                "filename": path.name}  # fmt: skip
        return str(self.api.post("/api/models", json=body).json()["id"])

    def endpoint(self, name: str, engine: str, model_id: str, options: dict[str, Any]) -> None:
        body = {"endpoint": name, "engine": engine, "model_id": model_id, "options": options}
        response = self.api.post("/api/services/default/endpoints", json=body)
        response.raise_for_status()
        deadline = time.monotonic() + 300
        while httpx.get(f"{self.url}/v2/models/{name}/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not load: {httpx.get(f'{self.url}/status').text}")
            time.sleep(0.1)

    def batcher(self, name: str) -> Any:
        return self.app.inference.runtime.dataplane.table.ready[name].batcher

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


# -- load generator (own process) -------------------------------------------------------------------
def oip_request(name: str, datatype: str, row: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(
        {
            "inputs": [{"name": name, "datatype": datatype, "shape": list(row.shape),
                        "parameters": {"binary_data_size": row.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    headers = {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}
    return head + row.tobytes(), headers


def _load(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float, out: Any) -> None:
    import aiohttp

    async def main() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop:
                    started = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                            continue
                    latencies.append(time.perf_counter() - started)

            begun = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return latencies, errors, time.perf_counter() - begun

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.send(asyncio.run(main()))


def load(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load, args=(url, body, headers, clients, seconds, send))
    proc.start()
    latencies, errors, elapsed = recv.recv()
    proc.join()
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50_ms": 1000 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "errors": errors,
    }


# -- offline -------------------------------------------------------------------------------------------
def offline(engine: Any, batch: np.ndarray, seconds: float = 2.0) -> float:
    """Rows per second of the engine alone on ``batch`` (after a warm-up)."""
    for _ in range(3):
        engine.predict_sync(batch, {}, lambda v: None)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine.predict_sync(batch, {}, lambda v: None)
        runs += 1
    return runs * len(batch) / (time.perf_counter() - started)


def engine_for(engine: str, path: Path, options: dict[str, Any]) -> Any:
    from modelyard.config import ArtifactRef, EndpointConfig, ModelRef
    from modelyard.engines.registry import default_engine_registry

    model = ModelRef(id="b", name="b", project="b", version=1, framework=engine,
                     artifact=ArtifactRef(sha256="0" * 64, filename=path.name))  # fmt: skip
    config = EndpointConfig(endpoint="offline", engine=engine, model=model, options=options)
    instance = default_engine_registry().create(config, path)
    instance.load()
    return instance


# -- the table ----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    cases: list[tuple[str, str, Path, dict[str, Any], str, str, np.ndarray]] = []
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                  "the GPU table needs a CUDA machine. Run without --device for the CPU table.")  # fmt: skip
            sys.exit(2)
        image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
        path = resnet50_torchscript(tmp / "resnet50.pt", "cuda")
        cases.append(("resnet50_fp16", "pytorch", path, {"device": "cuda"}, "images", "UINT8", image))
    else:
        row = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
        cases.append(("mlp_onnx", "onnx", mlp_onnx(tmp / "mlp.onnx"), {}, "X", "FP32", row))
        cases.append(("mlp_torch", "pytorch", mlp_torchscript(tmp / "mlp.pt"), {}, "x", "FP32", row))
    server = Server(tmp / "home")
    print(f"modelyard {args.device} batching bench: max batch {args.max_batch_size}, "
          f"delay {args.delay_ms} ms, {args.seconds:g} s per cell\n")  # fmt: skip
    try:
        for name, engine, path, options, input_name, datatype, row in cases:
            eng = engine_for(engine, path, options)
            batch = np.repeat(row, args.max_batch_size, axis=0)
            one = offline(eng, row)
            full = offline(eng, batch)
            eng.unload()
            print(
                f"## {name}: offline {one:,.0f} rows/s at batch 1, {full:,.0f} rows/s at batch {len(batch)}"
            )
            model_id = server.model(path, engine)
            server.endpoint(f"{name}_off", engine, model_id, options)
            batching = {"max_batch_size": args.max_batch_size, "max_batch_delay_ms": args.delay_ms,
                        "max_queue": max(1024, 4 * args.max_batch_size), **options}  # fmt: skip
            server.endpoint(f"{name}_on", engine, model_id, batching)
            body, headers = oip_request(input_name, datatype, row)
            print("| batching | clients | req/s | p50 ms | p99 ms | mean batch | errors |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for mode in ("off", "on"):
                endpoint = f"{name}_{mode}"
                for clients in args.clients:
                    batcher = server.batcher(endpoint)
                    before = (batcher.batches, batcher.batched_requests) if batcher else (0, 0)
                    url = f"{server.url}/v2/models/{endpoint}/infer"
                    stats = load(url, body, headers, clients, args.seconds)
                    mean = "1.0"
                    if batcher and batcher.batches > before[0]:
                        mean = f"{(batcher.batched_requests - before[1]) / (batcher.batches - before[0]):.1f}"
                    print(f"| {mode} | {clients} | {stats['rps']:,.0f} | {stats['p50_ms']:.2f} | "
                          f"{stats['p99_ms']:.2f} | {mean} | {stats['errors']} |", flush=True)  # fmt: skip
            print()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default 64 (CPU), 128 (GPU)")
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="load duration per cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    args = parser.parse_args()
    if args.max_batch_size is None:
        args.max_batch_size = 128 if args.device == "cuda" else 64
    run(args)


if __name__ == "__main__":
    main()
