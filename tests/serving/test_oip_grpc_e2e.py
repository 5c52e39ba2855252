"""Open Inference Protocol over gRPC on a real replica: tritonclient.grpc and the generated stub.

The replica is the all-in-one app under uvicorn with ``grpc_port`` set, so the gRPC front
runs on the replica's own event loop beside the HTTP one, as ``modelyard serve --grpc-port``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread, stop_process_group, wait_for_port
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import ECHO, mlp_expected, mlp_onnx

pytestmark = pytest.mark.slow

PARAMS = """
import numpy as np

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        state["scale"] = float(state["oip"]["parameters"].get("scale", 1))
        state["oip"]["response_parameters"] = {
            "scaled_by": state["scale"], "request_id": state["oip"]["id"] or "", "flag": True, "n": 3
        }
        return body

    def process(self, data, state, collect_custom_statistics_fn=None):
        return {"sum": (data["a"] + data["b"]) * state["scale"]}
"""


class Grpc:
    def __init__(self, url: str, target: str, api: Api, token: str) -> None:
        self.url, self.target, self.api, self.token = url, target, api, token
        self.client = tg.InferenceServerClient(target)
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.client.close()
        self.channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grpc]:
    tmp = tmp_path_factory.mktemp("oip-grpc")
    grpc_port = free_port()
    settings = Settings(home=tmp / "home", sync_wait_s=5, grpc_port=grpc_port, _env_file=None)  # type: ignore[call-arg]
    app = create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        wait_for_port("127.0.0.1", grpc_port)  # listening once uvicorn's startup is done
        token = settings.token_file().read_text().strip()
        api = Api(url, token)
        model_id = api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model_id)
        api.endpoint(endpoint="echo", version="1", engine="custom", preprocess=api.code(ECHO))
        api.endpoint(
            endpoint="params",
            engine="custom",
            preprocess=api.code(PARAMS),
            inputs=[
                {"name": "a", "dtype": "float32", "shape": [-1]},
                {"name": "b", "dtype": "float32", "shape": [-1]},
            ],
        )
        served = Grpc(url, f"127.0.0.1:{grpc_port}", api, token)
        try:
            for name in ("mlp", "echo", "params"):
                wait_for(lambda n=name: served.client.is_model_ready(n), timeout=20)
            yield served
        finally:
            served.close()
    # stopped with the replica: nothing listens on the gRPC port any more
    with pytest.raises(OSError):
        wait_for_port("127.0.0.1", grpc_port, timeout=0.3)


X = np.array([[1, 2, 3, 4], [-1, 0, 0.5, 2], [0, 0, 0, 0]], dtype=np.float32)


def _fails(call: Any, code: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", (info.value.status(), info.value.message())
    message = str(info.value.message())
    for fragment in fragments:
        assert fragment in message, message
    return message


def _input(name: str, arr: np.ndarray, datatype: str) -> tg.InferInput:
    tensor = tg.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def test_health_and_metadata(server: Grpc) -> None:
    client = server.client
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("mlp", "9")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelyard"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("mlp", "1")
    assert model.name == "mlp" and list(model.versions) == ["1"]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("X", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("Y", "FP32", [-1, 3]),
        ("label", "INT64", [-1]),
    ]
    # the same metadata as the HTTP front gives
    http = httpx.get(f"{server.url}/v2/models/mlp/versions/1").json()
    assert http["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    _fails(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "nope")


def test_infer_requested_outputs_and_id(server: Grpc) -> None:
    outputs = [tg.InferRequestedOutput("label"), tg.InferRequestedOutput("Y")]
    result = server.client.infer(
        "mlp", [_input("X", X, "FP32")], model_version="1", outputs=outputs, request_id="req-7"
    )
    y, label = mlp_expected(X)
    np.testing.assert_allclose(result.as_numpy("Y"), y, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_name == "mlp" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["label", "Y"]
    assert [o.datatype for o in response.outputs] == ["INT64", "FP32"]
    only = server.client.infer(
        "mlp", [_input("X", X[:1], "FP32")], outputs=[tg.InferRequestedOutput("label")]
    )
    assert [o.name for o in only.get_response().outputs] == ["label"]
    every = server.client.infer("mlp", [_input("X", X[:1], "FP32")])  # no outputs asked: all of them
    assert [o.name for o in every.get_response().outputs] == ["Y", "label"]
    assert every.get_response().model_version == "1"  # no version asked: the one that serves


ALL_TYPES = {
    "FP32": np.array([[0.1, -1e30, 3.5]], dtype=np.float32),
    "INT64": np.array([[-(2**62), 0, 2**62]], dtype=np.int64),
    "BYTES": np.array([[b"abc", b"", "h\u00e9llo".encode()]], dtype=object),
    "FP16": np.array([[0.5, -1.25, 2.0]], dtype=np.float16),
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-300, 0, 300]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**63]], dtype=np.uint64),
    "FP64": np.array([[0.1, -1e300, 3.5]], dtype=np.float64),
}


def test_every_datatype_round_trips_as_raw_contents(server: Grpc) -> None:
    inputs = [_input(f"in_{dt}", arr, dt) for dt, arr in ALL_TYPES.items()]
    outputs = [tg.InferRequestedOutput(f"in_{dt}") for dt in ALL_TYPES]
    result = server.client.infer("echo", inputs, outputs=outputs)
    for dt, arr in ALL_TYPES.items():
        got = result.as_numpy(f"in_{dt}")
        assert got is not None, dt
        assert got.shape == arr.shape, dt
        if dt == "BYTES":
            assert got.reshape(-1).tolist() == arr.reshape(-1).tolist()
        else:
            assert got.dtype == arr.dtype, dt
            np.testing.assert_array_equal(got, arr)
    datatypes = {o.name: o.datatype for o in result.get_response().outputs}
    assert datatypes == {f"in_{dt}": dt for dt in ALL_TYPES}


def _typed(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def test_typed_contents_by_hand(server: Grpc) -> None:
    request = pb.ModelInferRequest(
        model_name="mlp",
        id="typed-1",
        inputs=[_typed("X", "FP32", [3, 4], fp32_contents=X.reshape(-1).tolist())],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="label")],
    )
    response = server.stub.ModelInfer(request, timeout=30)
    assert response.id == "typed-1"
    assert [o.name for o in response.outputs] == ["label"]
    label = np.frombuffer(response.raw_output_contents[0], np.int64)
    np.testing.assert_array_equal(label, mlp_expected(X)[1])
    # every typed family reaches the endpoint as the right numpy dtype
    request = pb.ModelInferRequest(
        model_name="echo",
        inputs=[
            _typed("b", "BOOL", [2], bool_contents=[True, False]),
            _typed("i8", "INT8", [2], int_contents=[-5, 7]),
            _typed("i64", "INT64", [1, 2], int64_contents=[-(2**40), 3]),
            _typed("u16", "UINT16", [2], uint_contents=[0, 65535]),
            _typed("u64", "UINT64", [1], uint64_contents=[2**64 - 1]),
            _typed("f64", "FP64", [2], fp64_contents=[0.25, -2.5]),
            _typed("s", "BYTES", [2], bytes_contents=[b"x", b"yz"]),
        ],
    )
    response = server.stub.ModelInfer(request, timeout=30)
    got = {
        o.name: (o.datatype, list(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    assert got["b"] == ("BOOL", [2], b"\x01\x00")
    assert got["i8"] == ("INT8", [2], np.array([-5, 7], np.int8).tobytes())
    assert got["i64"] == ("INT64", [1, 2], np.array([-(2**40), 3], np.int64).tobytes())
    assert got["u16"] == ("UINT16", [2], np.array([0, 65535], np.uint16).tobytes())
    assert got["u64"] == ("UINT64", [1], np.array([2**64 - 1], np.uint64).tobytes())
    assert got["f64"] == ("FP64", [2], np.array([0.25, -2.5]).tobytes())
    assert got["s"] == ("BYTES", [2], b"\x01\x00\x00\x00x\x02\x00\x00\x00yz")


def test_parameters_reach_user_code_and_come_back(server: Grpc) -> None:
    a, b = np.array([1, 2], np.float32), np.array([3, 4], np.float32)
    result = server.client.infer(
        "params", [_input("a", a, "FP32"), _input("b", b, "FP32")], parameters={"scale": 10}, request_id="p1"
    )
    np.testing.assert_allclose(result.as_numpy("sum"), [40.0, 60.0])
    params = result.get_response().parameters
    assert params["scaled_by"].double_param == 10.0
    assert params["request_id"].string_param == "p1"
    assert params["flag"].bool_param is True
    assert params["n"].int64_param == 3


def test_bad_input_is_invalid_argument_naming_the_input(server: Grpc) -> None:
    infer = server.client.infer
    x64 = X.astype(np.float64)
    _fails(lambda: infer("mlp", [_input("X", x64, "FP64")]), "INVALID_ARGUMENT", "'X'", "FP32", "FP64")
    wide = np.zeros((1, 5), np.float32)
    _fails(lambda: infer("mlp", [_input("X", wide, "FP32")]), "INVALID_ARGUMENT", "'X'", "[-1, 4]", "[1, 5]")
    _fails(lambda: infer("mlp", [_input("Z", X, "FP32")]), "INVALID_ARGUMENT", "'Z'", "X")
    _fails(
        lambda: infer("mlp", [_input("X", X, "FP32")], outputs=[tg.InferRequestedOutput("nope")]),
        "INVALID_ARGUMENT",
        "'nope'",
        "Y, label",
    )
    _fails(lambda: infer("nope", [_input("X", X, "FP32")]), "NOT_FOUND", "nope")
    _fails(lambda: infer("mlp", [_input("X", X, "FP32")], model_version="9"), "NOT_FOUND", "9")
    # by hand: what tritonclient would never send
    stub = server.stub

    def call(*inputs: Any, raw: list[bytes] | None = None) -> Any:
        request = pb.ModelInferRequest(model_name="echo", inputs=list(inputs), raw_input_contents=raw or [])
        return lambda: stub.ModelInfer(request, timeout=30)

    def rpc_fails(fn: Any, code: grpc.StatusCode, *fragments: str) -> None:
        with pytest.raises(grpc.RpcError) as info:
            fn()
        assert info.value.code() == code, info.value.details()
        for fragment in fragments:
            assert fragment in info.value.details(), info.value.details()

    bad = grpc.StatusCode.INVALID_ARGUMENT
    raw_in = pb.ModelInferRequest.InferInputTensor(name="h", datatype="FP16", shape=[2])
    rpc_fails(call(raw_in, raw=[b"\x00" * 3]), bad, "'h'", "raw_input_contents is 3 bytes", "needs 4")
    rpc_fails(call(raw_in, raw=[b"\x00" * 4, b""]), bad, "2 entries", "1 inputs")
    rpc_fails(call(_typed("h", "FP16", [1])), bad, "'h'", "FP16", "raw_input_contents")
    rpc_fails(
        call(_typed("f", "FP32", [2], int64_contents=[1, 2])), bad, "'f'", "fp32_contents", "int64_contents"
    )
    rpc_fails(call(_typed("f", "FP32", [3], fp32_contents=[1, 2])), bad, "'f'", "3 elements", "has 2")
    rpc_fails(call(_typed("i", "INT8", [1], int_contents=[300])), bad, "'i'", "INT8")
    rpc_fails(call(_typed("q", "FP99", [1])), bad, "'q'", "FP99")
    rpc_fails(call(), bad, "at least one input")
    s = pb.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[1])
    rpc_fails(call(s, raw=[b"\x09\x00\x00\x00abc"]), bad, "'s'", "declares 9 bytes")
    request = pb.ModelInferRequest(
        model_name="mlp", inputs=[_typed("X", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4])]
    )
    request.outputs.add(name="label").parameters["classification"].int64_param = 2
    rpc_fails(lambda: stub.ModelInfer(request, timeout=30), bad, "classification")


def test_message_over_the_size_limit_is_resource_exhausted(server: Grpc) -> None:
    big = np.zeros((1, 3 * 1024 * 1024), np.float32)  # 12 MiB > max_body_bytes (8 MiB)
    _fails(lambda: server.client.infer("echo", [_input("x", big, "FP32")]), "RESOURCE_EXHAUSTED")


def test_repository_index_load_unload(server: Grpc, tmp_path: Path) -> None:
    client = server.client
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in index  # empty reason: left out of JSON
    client.load_model("mlp")  # already served: returns once ready
    _fails(lambda: client.load_model("ghost"), "NOT_FOUND", "not declared")
    _fails(lambda: client.unload_model("echo"), "UNAUTHENTICATED", "Authorization")
    model_id = server.api.model(mlp_onnx(tmp_path / "m2.onnx"), "mlp2", framework="onnx")
    auth = {"authorization": f"Bearer {server.token}"}
    config = orjson.dumps({"engine": "onnx", "model_id": model_id, "version": "3"}).decode()
    client.load_model("mlp2", headers=auth, config=config)
    assert client.is_model_ready("mlp2", "3")  # load returned once it was ready
    client.unload_model("mlp2", headers=auth)
    assert not client.is_model_ready("mlp2")
    _fails(lambda: client.get_model_metadata("mlp2"), "NOT_FOUND", "mlp2")
    wrong = {"authorization": "Bearer wrong"}
    _fails(lambda: client.unload_model("echo", headers=wrong), "PERMISSION_DENIED", "not valid")


def test_what_is_not_implemented_says_so(server: Grpc) -> None:
    _fails(lambda: server.client.get_model_config("mlp"), "UNIMPLEMENTED", "ModelMetadata")
    _fails(lambda: server.client.get_inference_statistics("mlp"), "UNIMPLEMENTED", "/metrics")
    _fails(lambda: server.client.get_system_shared_memory_status(), "UNIMPLEMENTED", "shared-memory")


# -- the CLI: several workers share the port, one worker does not ---------------------------------
MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def _listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` in this network namespace (gRPC binds 127.0.0.1 as an
    IPv6 socket with the v4-mapped address, so both tables are read)."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(path):  # no IPv6 in this kernel
            continue
        with open(path) as table:
            rows = [line.split() for line in table.readlines()[1:]]
        count += sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")
    return count


def test_serve_with_two_workers_shares_the_grpc_port(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MODELYARD, "serve", "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # each worker process binds the port itself, with SO_REUSEPORT
        wait_for(lambda: proc.poll() is not None or _listeners(grpc_port) == 2, timeout=60)
        assert proc.poll() is None, log.read_text()
        for _ in range(6):  # fresh connections, spread over the workers by the kernel
            client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                assert client.is_server_live()
                assert client.get_server_metadata().name == "modelyard"
            finally:
                client.close()
    finally:
        stop_process_group(proc, 30)
    assert _listeners(grpc_port) == 0  # stopped with the workers


def test_one_worker_refuses_a_grpc_port_already_taken(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another worker group would
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    grpc_port = holder.getsockname()[1]
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    try:
        result = subprocess.run(
            [
                MODELYARD, "inference", "--control-plane", f"http://127.0.0.1:{free_port()}",
                "--port", str(free_port()), "--grpc-port", str(grpc_port),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        holder.close()
    assert result.returncode != 0
    assert f"the gRPC front cannot listen on 127.0.0.1:{grpc_port}" in result.stdout + result.stderr
