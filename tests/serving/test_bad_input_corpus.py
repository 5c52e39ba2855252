"""A corpus of bad Open Inference Protocol requests against a real replica, HTTP and gRPC.

Every request a caller without a token can send wrong gets a 4xx (gRPC: the matching code)
whose message names the problem, never a 500 / INTERNAL, a stall or a big allocation: the
server is ``modelyard serve`` in its own process (so its RSS is its own), with the gRPC front
on. The probe test floods it with the whole corpus, many times over and concurrently, while
``/health/live`` is timed and the server's RSS is read from ``/proc``.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.servers import free_port, stop_process_group, wait_for_port
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import ECHO, mlp_onnx

pytestmark = pytest.mark.slow

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
LIMIT = 8 * 1024 * 1024  # Settings.max_body_bytes, the default the server runs with
HUGE = 4611686018427387904  # 2**62: [0, HUGE] has 0 elements, but numpy cannot reshape to it


@dataclass
class Served:
    url: str
    target: str
    pid: int
    token: str
    http: httpx.Client
    stub: Any
    channel: grpc.Channel


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("corpus")
    port, grpc_port = free_port(), free_port()
    home = tmp / "home"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_SYNC_WAIT_S": "5"}
    log = tmp / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MODELYARD, "serve", "--port", str(port), "--grpc-port", str(grpc_port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is not None or _answers(f"{url}/health/live"), timeout=60)
        assert proc.poll() is None, log.read_text()
        wait_for_port("127.0.0.1", grpc_port)
        token = (home / "token").read_text().strip()
        api = Api(url, token)
        model_id = api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model_id)
        api.endpoint(endpoint="echo", version="1", engine="custom", preprocess=api.code(ECHO))
        http = httpx.Client(base_url=url, timeout=30)
        for name in ("mlp", "echo"):
            wait_for(lambda n=name: http.get(f"/v2/models/{n}/ready").status_code == 200, timeout=30)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            yield Served(url, f"127.0.0.1:{grpc_port}", proc.pid, token, http, stub, channel)
        finally:
            http.close()
            channel.close()
            api.http.close()
    finally:
        stop_process_group(proc, 30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- the HTTP corpus ---------------------------------------------------------------------------------
@dataclass
class HttpCase:
    name: str
    path: str
    body: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)
    status: int = 400
    fragments: tuple[str, ...] = ()
    method: str = "POST"
    token: bool = False
    """Send the admin token (the case is about what follows authentication)."""


def _json(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _tensor(name: str, datatype: str, shape: Any, data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _binary(*inputs: tuple[str, str, Any, bytes], declared: list[int] | None = None) -> dict[str, Any]:
    """A binary-extension request; ``declared``: binary_data_size per input when not the true one."""
    sizes = declared or [len(raw) for *_, raw in inputs]
    head = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": size}}
                for (n, dt, shape, _), size in zip(inputs, sizes, strict=True)
            ]
        }
    )
    body = head + b"".join(raw for *_, raw in inputs)
    return {"body": body, "headers": {"inference-header-content-length": str(len(head))}}


X_OK = _tensor("X", "FP32", [1, 4], [1, 2, 3, 4])
ECHO_URL = "/v2/models/echo/infer"
MLP_URL = "/v2/models/mlp/infer"


def http_corpus() -> list[HttpCase]:
    deep = b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    bomb = gzip.compress(b"\0" * (LIMIT + 1024 * 1024), compresslevel=9)  # ~9 KB inflating to 9 MiB
    return [
        # what used to stall the replica, answer 500 or allocate from the declared shape
        HttpCase(
            "bytes shape far over the binary data",
            ECHO_URL,
            **_binary(("s", "BYTES", [100000000], b"\x00" * 12)),
            fragments=("'s'", "[100000000] declares 100000000 BYTES", "binary_data_size is 12 bytes", "4"),
        ),
        HttpCase(
            "bytes shape of 10**11",
            ECHO_URL,
            **_binary(("s", "BYTES", [10**11], b"\x00" * 12)),
            fragments=("'s'", "100000000000 BYTES elements"),
        ),
        HttpCase(
            "bytes shape of 2**63",
            ECHO_URL,
            **_binary(("s", "BYTES", [2**63], b"\x00" * 4)),
            fragments=("'s'", f"{2**63} BYTES elements"),
        ),
        HttpCase(
            "overflowing shape, JSON",
            ECHO_URL,
            _json(_tensor("e", "FP32", [0, HUGE], [])),
            fragments=("'e'", f"[0, {HUGE}]", "out of range", str(LIMIT)),
        ),
        HttpCase(
            "overflowing shape, binary",
            ECHO_URL,
            **_binary(("e", "FP32", [0, HUGE], b"")),
            fragments=("'e'", f"[0, {HUGE}]", "out of range"),
        ),
        HttpCase(
            "overflowing BYTES shape, binary",
            ECHO_URL,
            **_binary(("e", "BYTES", [0, HUGE, 4], b"")),
            fragments=("'e'", "out of range"),
        ),
        HttpCase(
            "more dimensions than numpy has",
            ECHO_URL,
            _json(_tensor("r", "FP32", [1] * 65, [1])),
            fragments=("'r'", "65 dimensions", "32"),
        ),
        HttpCase(
            "non-ASCII digit as header length (latin-1)",
            ECHO_URL,
            _json(X_OK),
            headers={"inference-header-content-length": b"\xb2"},
            fragments=("Inference-Header-Content-Length", "ASCII digits"),
        ),
        HttpCase(
            "non-ASCII digit as header length (UTF-8)",
            ECHO_URL,
            _json(X_OK),
            headers={"inference-header-content-length": "²".encode()},
            fragments=("Inference-Header-Content-Length", "ASCII digits"),
        ),
        HttpCase(
            "header length of 5000 digits",
            ECHO_URL,
            _json(X_OK),
            headers={"inference-header-content-length": "9" * 5000},
            fragments=("Inference-Header-Content-Length", "characters"),
        ),
        HttpCase(
            "repository load with parameters that are a list",
            "/v2/repository/models/x/load",
            b'{"parameters": [1]}',
            fragments=("'parameters' must be a JSON object", "list"),
        ),
        HttpCase(
            "repository load with a config that is not JSON",
            "/v2/repository/models/x/load",
            b'{"parameters": {"config": "not json"}}',
            fragments=("parameters.config is not valid JSON",),
            token=True,
        ),
        HttpCase(
            "repository load with a config that is not JSON, no token",
            "/v2/repository/models/x/load",
            b'{"parameters": {"config": "not json"}}',
            fragments=("parameters.config is not valid JSON",),
        ),
        HttpCase(
            "datatype that is a list (found by schemathesis)",
            ECHO_URL,
            _json({"name": "d", "datatype": [], "shape": [1], "data": [1]}),
            fragments=("'d'", "datatype [] is not one of"),
        ),
        # what was answered well already
        HttpCase("malformed JSON", MLP_URL, b"{not json", fragments=("malformed JSON",)),
        HttpCase("deep JSON", ECHO_URL, deep, fragments=("malformed JSON", "depth")),
        HttpCase("body that is not an object", MLP_URL, b"[1, 2]", fragments=("JSON object",)),
        HttpCase("missing inputs list", MLP_URL, b'{"id": "1"}', fragments=("'inputs' list",)),
        HttpCase("empty inputs list", MLP_URL, _json(), fragments=("'inputs' list",)),
        HttpCase("input without a name", ECHO_URL, _json({"datatype": "FP32"}), fragments=("'name'",)),
        HttpCase("duplicate input", ECHO_URL, _json(X_OK, X_OK), fragments=("input 'X' is given twice",)),
        HttpCase(
            "wrong datatype for the model",
            MLP_URL,
            _json(_tensor("X", "FP64", [1, 4], [1, 2, 3, 4])),
            fragments=("'X'", "FP32", "FP64"),
        ),
        HttpCase(
            "unknown datatype",
            ECHO_URL,
            _json(_tensor("q", "FP99", [1], [1])),
            fragments=("'q'", "FP99"),
        ),
        HttpCase(
            "shape that does not match the data",
            MLP_URL,
            _json(_tensor("X", "FP32", [2, 4], [1, 2, 3, 4])),
            fragments=("'X'", "needs 8 elements", "data has 4"),
        ),
        HttpCase(
            "shape the model does not take",
            MLP_URL,
            _json(_tensor("X", "FP32", [1, 5], [1, 2, 3, 4, 5])),
            fragments=("'X'", "[-1, 4]", "[1, 5]"),
        ),
        HttpCase(
            "negative dimension",
            ECHO_URL,
            _json(_tensor("n", "FP32", [-1], [1])),
            fragments=("'n'", "non-negative"),
        ),
        HttpCase(
            "ragged data",
            ECHO_URL,
            _json(_tensor("g", "FP32", [2, 2], [[1, 2], [3]])),
            fragments=("'g'", "rectangular"),
        ),
        HttpCase(
            "BYTES data that are not strings",
            ECHO_URL,
            _json(_tensor("s", "BYTES", [1], [5])),
            fragments=("'s'", "strings"),
        ),
        HttpCase("unknown input", MLP_URL, _json(_tensor("Z", "FP32", [1], [1])), fragments=("'Z'", "X")),
        HttpCase(
            "unknown output",
            MLP_URL,
            _json(X_OK, outputs=[{"name": "nope"}]),
            fragments=("'nope'", "Y, label"),
        ),
        HttpCase(
            "classification extension",
            MLP_URL,
            _json(X_OK, outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            fragments=("classification",),
        ),
        HttpCase(
            "truncated binary data",
            ECHO_URL,
            **_binary(("t", "FP32", [4], b"\x00" * 8), declared=[16]),
            fragments=("'t'", "shorter than declared", "16"),
        ),
        HttpCase(
            "binary size that does not fit the shape",
            ECHO_URL,
            **_binary(("t", "FP32", [4], b"\x00" * 12)),
            fragments=("'t'", "12 bytes", "needs 16 bytes"),
        ),
        HttpCase(
            "BYTES element longer than the data",
            ECHO_URL,
            **_binary(("s", "BYTES", [1], struct.pack("<I", 9) + b"abc")),
            fragments=("'s'", "declares 9 bytes"),
        ),
        HttpCase(
            "header length past the body",
            ECHO_URL,
            _json(X_OK),
            headers={"inference-header-content-length": "100000"},
            fragments=("Inference-Header-Content-Length is 100000",),
        ),
        HttpCase(
            "gzip bomb",
            ECHO_URL,
            bomb,
            headers={"content-encoding": "gzip"},
            status=413,
            fragments=("decompressed request body", str(LIMIT)),
        ),
        HttpCase(
            "unsupported content encoding",
            ECHO_URL,
            b"xx",
            headers={"content-encoding": "br"},
            fragments=("Content-Encoding", "br"),
        ),
        HttpCase(
            "oversized body",
            ECHO_URL,
            b" " * (LIMIT + 1),
            status=413,
            fragments=("larger than the limit", str(LIMIT)),
        ),
        HttpCase("unknown model", "/v2/models/nope/infer", _json(X_OK), status=404, fragments=("nope",)),
        HttpCase(
            "unknown version",
            "/v2/models/mlp/versions/9/infer",
            _json(X_OK),
            status=404,
            fragments=("mlp", "9"),
        ),
        HttpCase("infer with GET", MLP_URL, method="GET", status=405, fragments=("POST",)),
        HttpCase("unknown route", "/v2/nothing/here", method="GET", status=404, fragments=("no route",)),
        HttpCase(
            "repository load of an undeclared model",
            "/v2/repository/models/ghost/load",
            status=404,
            fragments=("'ghost'", "not declared"),
        ),
        HttpCase(
            "repository unload without a token",
            "/v2/repository/models/echo/unload",
            status=401,
            fragments=("Authorization",),
        ),
    ]


def _send(served: Served, case: HttpCase, client: httpx.Client | None = None) -> httpx.Response:
    headers = dict(case.headers)
    if case.token:
        headers["authorization"] = f"Bearer {served.token}"
    client = client or served.http
    return client.request(case.method, case.path, content=case.body or None, headers=headers)


def _check_http(case: HttpCase, response: httpx.Response) -> None:
    assert response.status_code == case.status, (case.name, response.status_code, response.text)
    message = response.json()["error"]
    for fragment in case.fragments:
        assert fragment in message, (case.name, message)


HTTP_CASES = http_corpus()


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.name for c in HTTP_CASES])
def test_http_bad_input_is_a_4xx_naming_the_problem(served: Served, case: HttpCase) -> None:
    started = time.monotonic()
    _check_http(case, _send(served, case))
    assert time.monotonic() - started < 5, f"{case.name}: answered, but slowly"


# -- the gRPC corpus ---------------------------------------------------------------------------------
@dataclass
class GrpcCase:
    name: str
    call: Callable[[Any], Any]
    """Makes the call on a stub."""
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    fragments: tuple[str, ...] = ()


def _infer(*inputs: Any, raw: list[bytes] | None = None, model: str = "echo") -> Callable[[Any], Any]:
    request = pb.ModelInferRequest(model_name=model, inputs=list(inputs), raw_input_contents=raw or [])
    return lambda stub: stub.ModelInfer(request, timeout=30)


def _in(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def _load(config: str, authorization: str | None) -> Callable[[Any], Any]:
    request = pb.RepositoryModelLoadRequest(model_name="x")
    request.parameters["config"].string_param = config
    metadata = (("authorization", authorization),) if authorization else None
    return lambda stub: stub.RepositoryModelLoad(request, timeout=30, metadata=metadata)


def grpc_corpus(token: str) -> list[GrpcCase]:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    return [
        # new: declared shapes checked against what was sent before anything is allocated
        GrpcCase(
            "raw BYTES shape far over the raw contents",
            _infer(_in("s", "BYTES", [100000000]), raw=[b"\x00" * 12]),
            fragments=("'s'", "declares 100000000 BYTES elements", "raw_input_contents is 12 bytes"),
        ),
        GrpcCase(
            "raw BYTES shape of 10**11",
            _infer(_in("s", "BYTES", [10**11]), raw=[b"\x00" * 12]),
            fragments=("'s'", "100000000000 BYTES elements"),
        ),
        GrpcCase(
            "overflowing shape, raw",
            _infer(_in("e", "FP32", [0, HUGE]), raw=[b""]),
            fragments=("'e'", "out of range"),
        ),
        GrpcCase(
            "overflowing shape, typed contents",
            _infer(_in("e", "FP32", [0, HUGE])),
            fragments=("'e'", "out of range"),
        ),
        GrpcCase(
            "overflowing BYTES shape, typed contents",
            _infer(_in("e", "BYTES", [0, HUGE, 2])),
            fragments=("'e'", "out of range"),
        ),
        GrpcCase(
            "more dimensions than numpy has",
            _infer(_in("r", "FP32", [1] * 65, fp32_contents=[1.0])),
            fragments=("'r'", "65 dimensions"),
        ),
        GrpcCase(
            "repository load with a config that is not JSON",
            _load("not json", f"Bearer {token}"),
            fragments=("parameters.config is not valid JSON",),
        ),
        # answered well already
        GrpcCase("no inputs", _infer(), fragments=("at least one input",)),
        GrpcCase(
            "duplicate input",
            _infer(_in("a", "FP32", [1], fp32_contents=[1]), _in("a", "FP32", [1], fp32_contents=[1])),
            fragments=("'a' is given twice",),
        ),
        GrpcCase(
            "raw size that does not fit the shape",
            _infer(_in("h", "FP16", [2]), raw=[b"\x00" * 3]),
            fragments=("'h'", "raw_input_contents is 3 bytes", "needs 4"),
        ),
        GrpcCase(
            "raw entries that do not match the inputs",
            _infer(_in("h", "FP16", [2]), raw=[b"\x00" * 4, b""]),
            fragments=("2 entries", "1 inputs"),
        ),
        GrpcCase(
            "contents in another datatype's field",
            _infer(_in("f", "FP32", [2], int64_contents=[1, 2])),
            fragments=("'f'", "fp32_contents", "int64_contents"),
        ),
        GrpcCase(
            "shape that does not match the contents",
            _infer(_in("f", "FP32", [3], fp32_contents=[1, 2])),
            fragments=("'f'", "3 elements", "has 2"),
        ),
        GrpcCase(
            "wrong datatype for the model",
            _infer(_in("X", "FP64", [1, 4], fp64_contents=[1, 2, 3, 4]), model="mlp"),
            fragments=("'X'", "FP32", "FP64"),
        ),
        GrpcCase("unknown datatype", _infer(_in("q", "FP99", [1])), fragments=("'q'", "FP99")),
        GrpcCase(
            "BYTES element longer than the data",
            _infer(_in("s", "BYTES", [1]), raw=[b"\x09\x00\x00\x00abc"]),
            fragments=("'s'", "declares 9 bytes"),
        ),
        GrpcCase(
            "unknown model",
            _infer(_in("a", "FP32", [1], fp32_contents=[1]), model="nope"),
            code=grpc.StatusCode.NOT_FOUND,
            fragments=("nope",),
        ),
        GrpcCase(
            "message over the size limit",
            _infer(_in("x", "FP32", [3 * 1024 * 1024]), raw=[bytes(12 * 1024 * 1024)]),
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        GrpcCase(
            "repository load with a config that is not JSON, no token",
            _load("not json", None),
            code=bad,
            fragments=("parameters.config is not valid JSON",),
        ),
    ]


def _check_grpc(case: GrpcCase, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        case.call(stub)
    error: Any = info.value
    assert error.code() == case.code, (case.name, error.code(), error.details())
    for fragment in case.fragments:
        assert fragment in error.details(), (case.name, error.details())


GRPC_NAMES = [c.name for c in grpc_corpus("")]


@pytest.mark.parametrize("name", GRPC_NAMES)
def test_grpc_bad_input_is_invalid_argument_naming_the_problem(served: Served, name: str) -> None:
    case = next(c for c in grpc_corpus(served.token) if c.name == name)
    started = time.monotonic()
    _check_grpc(case, served.stub)
    assert time.monotonic() - started < 5, f"{case.name}: answered, but slowly"


# -- the probe: the corpus floods the server, /health/live and memory stay put ---------------------
def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


ROUNDS = 6
CONCURRENCY = 6


def test_the_corpus_many_times_over_leaves_health_fast_and_memory_flat(served: Served) -> None:
    http_cases = http_corpus()
    grpc_cases = grpc_corpus(served.token)

    def one_round(_: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            for case in http_cases:
                _check_http(case, _send(served, case, client))
        for grpc_case in grpc_cases:
            _check_grpc(grpc_case, served.stub)

    one_round(0)  # warm: first-use allocations (imports, pools, caches) are not what is measured
    time.sleep(0.5)
    baseline = _rss_kib(served.pid)
    latencies: list[float] = []
    peak = [baseline]
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = client.get("/health/live")
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
                peak[0] = max(peak[0], _rss_kib(served.pid))
                time.sleep(0.01)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one_round, range(ROUNDS * CONCURRENCY)))
    finally:
        stop.set()
        prober.join(30)
    final = _rss_kib(served.pid)
    worst_ms = max(latencies) * 1000
    p99_ms = float(np.percentile(latencies, 99)) * 1000
    grown_mb = (peak[0] - baseline) / 1024
    print(
        f"\n/health/live over {len(latencies)} probes: max {worst_ms:.1f} ms, p99 {p99_ms:.1f} ms; "
        f"server RSS {baseline / 1024:.0f} MB at start, peak +{grown_mb:.1f} MB, "
        f"end +{(final - baseline) / 1024:.1f} MB"
    )
    assert len(latencies) > 10
    # 50 ms is the aim. On a shared 2-core box the scheduler alone puts single probes past 60 ms
    # with the server idle, and past 400 ms under this flood; so the tail is held to 250 ms and
    # the worst probe to 1 s, which a stalled replica (4 s, before the shapes were checked) fails.
    assert p99_ms < 250, f"/health/live took {p99_ms:.0f} ms (99th percentile) while the corpus ran"
    assert worst_ms < 1000, f"/health/live took {worst_ms:.0f} ms while the corpus ran"
    assert grown_mb < 50, f"the server's RSS grew by {grown_mb:.0f} MB while the corpus ran"
