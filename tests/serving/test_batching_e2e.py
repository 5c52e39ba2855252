"""Dynamic batching and the triton engine on real servers (uvicorn), with concurrent distinct requests.

Both replicas also serve the Open Inference Protocol over gRPC (``grpc_port``): the triton
engine forwards over either protocol, and a full queue is refused on either front.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.server import AllInOneApp, create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread, wait_for_port
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import mlp_expected, mlp_onnx

pytestmark = pytest.mark.slow

FAIL_ON_MARKER = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if float(body["X"][0][0]) == -999:
            raise ValueError("marker row refused")
        return body
"""

SLOW = """
import time

class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        time.sleep(1.0)
        return data
"""


class Served:
    def __init__(self, app: AllInOneApp, url: str, api: Api, grpc_port: int) -> None:
        self.app, self.url, self.api, self.grpc_port = app, url, api, grpc_port

    def batcher(self, key: str) -> Any:
        return self.app.inference.runtime.dataplane.table.ready[key].batcher

    def ready(self, name: str) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/v2/models/{name}/ready").status_code == 200, timeout=20)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    tmp = tmp_path_factory.mktemp("batching")
    with _server(tmp / "a") as a, _server(tmp / "b") as b:
        model = a.api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        opts = {"max_batch_size": 16, "max_batch_delay_ms": 20}
        a.api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model, options=opts)
        a.api.endpoint(endpoint="plain", version="1", engine="onnx", model_id=model)
        a.api.endpoint(
            endpoint="marked",
            engine="onnx",
            model_id=model,
            options=opts,
            preprocess=a.api.code(FAIL_ON_MARKER),
        )
        model_b = b.api.model(mlp_onnx(tmp / "mlp-b.onnx"), "mlp", framework="onnx")
        b.api.endpoint(endpoint="remote_mlp", version="2", engine="onnx", model_id=model_b)
        b.ready("remote_mlp")
        a.api.endpoint(
            endpoint="via_triton",
            engine="triton",
            options={"url": b.url, "model_name": "remote_mlp", "model_version": "2", **opts},
        )
        a.api.endpoint(
            endpoint="via_grpc",
            engine="triton",
            options={
                "url": f"grpc://127.0.0.1:{b.grpc_port}",
                "model_name": "remote_mlp",
                "model_version": "2",
                **opts,
            },
        )
        a.api.endpoint(
            endpoint="tiny_queue",
            engine="custom",
            preprocess=a.api.code(SLOW),
            options={"max_batch_size": 2, "max_batch_delay_ms": 0, "max_queue": 1},
        )
        for name in ("mlp", "plain", "marked", "via_triton", "via_grpc", "tiny_queue"):
            a.ready(name)
        yield a, b


class _server:
    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home, sync_wait_s=5, _env_file=None)  # type: ignore[call-arg]

    def __enter__(self) -> Served:
        grpc_port = free_port()
        app = create_all_in_one_app(self.settings.model_copy(update={"grpc_port": grpc_port}))
        self.ctx = run_uvicorn_in_thread(app)
        url = self.ctx.__enter__()
        wait_for_port("127.0.0.1", grpc_port)
        return Served(app, url, Api(url, self.settings.token_file().read_text().strip()), grpc_port)

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)


def _rows(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(n)]


def _oip_binary(url: str, model: str, x: np.ndarray) -> httpx.Response:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "Y"}, {"name": "label"}],
        }
    )
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        content=head + x.tobytes(),
        headers={"inference-header-content-length": str(len(head))},
        timeout=30,
    )


def test_concurrent_oip_requests_each_get_their_own_answer(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    batcher = a.batcher("mlp/1")
    before = (batcher.batches, batcher.batched_requests)
    xs = _rows(64)
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda x: _oip_binary(a.url, "mlp", x), xs))
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        y, label = mlp_expected(x)
        out = {o["name"]: o for o in response.json()["outputs"]}
        np.testing.assert_allclose(np.array(out["Y"]["data"]).reshape(out["Y"]["shape"]), y, rtol=1e-5)
        assert out["label"]["data"] == label.tolist()
    batches = batcher.batches - before[0]
    assert batcher.batched_requests - before[1] == 64
    assert batches < 64  # requests were stacked


def test_serve_route_batches_too_and_bad_requests_fail_alone(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    xs = _rows(24)
    bodies: list[Any] = [{"X": x.tolist()} for x in xs]
    bodies[3] = {"X": [[-999, 0, 0, 0]]}  # refused by preprocess
    bodies[7] = {"X": [[1, 2, 3]]}  # wrong feature count: the model refuses it
    with ThreadPoolExecutor(24) as pool:
        responses = list(
            pool.map(
                lambda b: httpx.post(f"{a.url}/serve/marked", json=b, timeout=30),
                bodies,
            )
        )
    assert responses[3].status_code == 422 and "marker row refused" in responses[3].json()["error"]
    assert responses[7].status_code == 400, responses[7].text
    for i, (x, response) in enumerate(zip(xs, responses, strict=True)):
        if i in (3, 7):
            continue
        assert response.status_code == 200, response.text
        assert response.json()["label"] == mlp_expected(x)[1].tolist()


def test_triton_engine_forwards_to_a_second_modelyard(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    meta = httpx.get(f"{a.url}/v2/models/via_triton").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    client = triton.InferenceServerClient(url=a.url.removeprefix("http://"))
    try:
        x = _rows(3)[2]
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("via_triton", [inp])
        np.testing.assert_allclose(result.as_numpy("Y"), mlp_expected(x)[0], rtol=1e-5)
    finally:
        client.close()
    # /serve with JSON floats (float64): cast to the remote FP32; concurrent calls batch into one
    xs = _rows(16)
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda x: httpx.post(f"{a.url}/serve/via_triton", json=x.tolist(), timeout=30), xs)
        )
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["label"] == mlp_expected(x)[1].tolist()
    assert a.batcher("via_triton").batches < 17
    bad = httpx.post(f"{a.url}/serve/via_triton", json=[[1, 2, 3]], timeout=30)
    assert bad.status_code == 400 and "remote_mlp" in bad.json()["error"]


def test_triton_engine_forwards_over_grpc_to_a_second_modelyard(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    meta = httpx.get(f"{a.url}/v2/models/via_grpc").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "Y", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]
    assert meta["platform"] == "remote:onnxruntime_onnx"
    client = triton.InferenceServerClient(url=a.url.removeprefix("http://"))
    try:
        x = _rows(3)[2]
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("via_grpc", [inp])
        np.testing.assert_allclose(result.as_numpy("Y"), mlp_expected(x)[0], rtol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("label"), mlp_expected(x)[1])
    finally:
        client.close()
    # /serve with JSON floats (float64): cast to the remote FP32; concurrent calls batch into one
    before = a.batcher("via_grpc").batches
    xs = _rows(16)
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda x: httpx.post(f"{a.url}/serve/via_grpc", json=x.tolist(), timeout=30), xs)
        )
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["label"] == mlp_expected(x)[1].tolist()
    assert a.batcher("via_grpc").batches - before < 16
    # the remote model refuses the input (INVALID_ARGUMENT): 400 naming it, as over HTTP
    bad = httpx.post(f"{a.url}/serve/via_grpc", json=[[1, 2, 3]], timeout=30)
    assert bad.status_code == 400 and "remote_mlp" in bad.json()["error"], bad.text
    assert "[-1, 4]" in bad.json()["error"]
    # and the engine's replica is itself reachable over gRPC: a chain of two gRPC hops
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{a.grpc_port}")
    try:
        x = _rows(2)[1]
        inp = triton_grpc.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = grpc_client.infer("via_grpc", [inp])
        np.testing.assert_allclose(result.as_numpy("Y"), mlp_expected(x)[0], rtol=1e-5)
    finally:
        grpc_client.close()


def _slow_body(i: int) -> list[float]:
    return [float(i)]


def test_full_queue_is_503_with_retry_after_over_http(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda i: httpx.post(f"{a.url}/serve/tiny_queue", json=_slow_body(i), timeout=30), range(8)
            )
        )
    refused = [r for r in responses if r.status_code == 503]
    answered = [r for r in responses if r.status_code == 200]
    assert len(refused) + len(answered) == 8, [r.text for r in responses]
    # one batch computes (1 s) while ONE request may wait: the rest, arriving meanwhile, are refused
    assert answered and refused
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["kind"] == "overloaded"
        assert "max_queue 1" in response.json()["error"]
    assert {tuple(r.json()) for r in answered} <= {(float(i),) for i in range(8)}


def test_full_queue_is_unavailable_with_retry_after_over_grpc(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    channel = grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def call(i: int) -> Any:
        request = pb.ModelInferRequest(
            model_name="tiny_queue",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[i])
                )
            ],
        )
        try:
            return stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return exc

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
    finally:
        channel.close()
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    answered = [r for r in results if not isinstance(r, grpc.RpcError)]
    assert answered and refused
    for error in refused:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "max_queue 1" in error.details()
        trailing = dict(error.trailing_metadata() or ())
        assert trailing["retry-after"] == "1"
        assert trailing["modelyard-kind"] == "overloaded"
    for response in answered:
        x = np.frombuffer(response.raw_output_contents[0], np.float32)
        assert x.shape == (1,) and 0 <= x[0] < 8
