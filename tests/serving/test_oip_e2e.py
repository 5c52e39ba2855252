"""Open Inference Protocol on a real uvicorn: tritonclient.http and spec-shaped httpx requests."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import ECHO, mlp_expected, mlp_onnx

PARAMS = """
import numpy as np

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        oip = state["oip"]
        state["scale"] = float(oip["parameters"].get("scale", 1))
        return body

    def process(self, data, state, collect_custom_statistics_fn=None):
        return {"sum": (data["a"] + data["b"]) * state["scale"], "n": np.array([len(data["a"])])}

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        state["oip"]["response_parameters"] = {"scaled_by": state["scale"]}
        return data
"""


class Oip:
    def __init__(self, url: str, api: Api, token: str) -> None:
        self.url = url
        self.api = api
        self.token = token
        self.client = triton.InferenceServerClient(url=url.removeprefix("http://"))

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kw)


@pytest.fixture(scope="module")
def oip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oip]:
    tmp = tmp_path_factory.mktemp("oip")
    settings = Settings(home=tmp / "home", sync_wait_s=5, _env_file=None)  # type: ignore[call-arg]
    app = create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        token = settings.token_file().read_text().strip()
        api = Api(url, token)
        model_id = api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model_id)
        api.endpoint(
            endpoint="mlp_label",
            engine="onnx",
            model_id=model_id,
            outputs=[{"name": "label"}],
        )
        api.endpoint(endpoint="echo", version="1", engine="custom", preprocess=api.code(ECHO))
        api.endpoint(
            endpoint="params",
            engine="custom",
            preprocess=api.code(PARAMS),
            inputs=[
                {"name": "a", "dtype": "float32", "shape": [-1]},
                {"name": "b", "dtype": "float32", "shape": [-1]},
            ],
            outputs=[{"name": "sum", "dtype": "float64"}, {"name": "n", "dtype": "int32"}],
        )
        server = Oip(url, api, token)
        for name in ("mlp", "mlp_label", "echo", "params"):
            wait_for(lambda n=name: server.get(f"/v2/models/{n}/ready").status_code == 200, timeout=20)
        yield server
        server.client.close()


X = np.array([[1, 2, 3, 4], [-1, 0, 0.5, 2], [0, 0, 0, 0]], dtype=np.float32)


def test_tritonclient_health_and_metadata(oip: Oip) -> None:
    assert oip.client.is_server_live()
    assert oip.client.is_server_ready()
    assert oip.client.is_model_ready("mlp")
    assert oip.client.is_model_ready("mlp", "1")
    assert not oip.client.is_model_ready("nope")
    server = oip.client.get_server_metadata()
    assert server["name"] == "modelyard"
    assert "binary_tensor_data" in server["extensions"]
    meta = oip.client.get_model_metadata("mlp", "1")
    assert meta["name"] == "mlp"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "Y", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]
    declared = oip.client.get_model_metadata("params")
    assert declared["inputs"][0] == {"name": "a", "datatype": "FP32", "shape": [-1]}
    assert declared["outputs"][1] == {"name": "n", "datatype": "INT32", "shape": [-1]}
    # declared output without a dtype: the model's datatype fills it in
    assert oip.client.get_model_metadata("mlp_label")["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]}
    ]
    with pytest.raises(InferenceServerException, match="not found"):
        oip.client.get_model_metadata("nope")


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_infer(oip: Oip, binary_in: bool, binary_out: bool) -> None:
    inp = triton.InferInput("X", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary_in)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary_out),
        triton.InferRequestedOutput("Y", binary_data=binary_out),
    ]
    result = oip.client.infer("mlp", [inp], model_version="1", outputs=outputs, request_id="req-7")
    y, label = mlp_expected(X)
    np.testing.assert_allclose(result.as_numpy("Y"), y, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "mlp" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["label", "Y"]


def test_tritonclient_default_outputs_are_binary_and_version_optional(oip: Oip) -> None:
    inp = triton.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(X[:1])
    result = oip.client.infer("mlp", [inp])
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("label"), mlp_expected(X[:1])[1])


ALL_TYPES = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-300, 0, 300]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**62), 0, 2**62]], dtype=np.int64),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**63]], dtype=np.uint64),
    "FP16": np.array([[0.5, -1.25, 2.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -1e30, 3.5]], dtype=np.float32),
    "FP64": np.array([[0.1, -1e300, 3.5]], dtype=np.float64),
    "BYTES": np.array([[b"abc", b"", "h\u00e9llo".encode()]], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(oip: Oip, binary: bool) -> None:
    inputs = []
    for dt, arr in ALL_TYPES.items():
        inp = triton.InferInput(f"in_{dt}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    outputs = [triton.InferRequestedOutput(f"in_{dt}", binary_data=binary) for dt in ALL_TYPES]
    result = oip.client.infer("echo", inputs, outputs=outputs)
    for dt, arr in ALL_TYPES.items():
        got = result.as_numpy(f"in_{dt}")
        assert got is not None, dt
        if dt == "BYTES":
            # tritonclient gives JSON BYTES back as str, binary ones as bytes
            as_bytes = [x if isinstance(x, bytes) else x.encode() for x in got.reshape(-1).tolist()]
            assert as_bytes == arr.reshape(-1).tolist()
        else:
            assert got.dtype == arr.dtype, dt
            np.testing.assert_array_equal(got, arr)
        out = next(o for o in result.get_response()["outputs"] if o["name"] == f"in_{dt}")
        assert out["datatype"] == dt and out["shape"] == [1, 3]


def test_spec_example_json_nested_and_flat(oip: Oip) -> None:
    for data in (X[:2].tolist(), X[:2].reshape(-1).tolist()):
        response = oip.post(
            "/v2/models/mlp/versions/1/infer",
            json={
                "id": "42",
                "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": data}],
                "outputs": [{"name": "label"}],
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["id"] == "42" and body["model_name"] == "mlp" and body["model_version"] == "1"
        assert body["outputs"] == [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": mlp_expected(X[:2])[1].tolist()}
        ]


def test_parameters_reach_user_code_and_come_back(oip: Oip) -> None:
    response = oip.post(
        "/v2/models/params/infer",
        json={
            "parameters": {"scale": 10},
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                {"name": "b", "shape": [2], "datatype": "FP32", "data": [3, 4]},
            ],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"] == {"scaled_by": 10.0}
    assert body["outputs"] == [
        {"name": "sum", "datatype": "FP64", "shape": [2], "data": [40.0, 60.0]},
        {"name": "n", "datatype": "INT32", "shape": [1], "data": [2]},
    ]


def _binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], extra: bytes = b"", **header: Any
) -> Any:
    doc = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            for n, dt, shape, raw in inputs
        ],
        **header,
    }
    head = orjson.dumps(doc)
    body = head + b"".join(raw for *_, raw in inputs) + extra
    return {"content": body, "headers": {"inference-header-content-length": str(len(head))}}


def test_binary_request_and_binary_response_by_hand(oip: Oip) -> None:
    kw = _binary_request([("X", "FP32", [3, 4], X.tobytes())], parameters={"binary_data_output": True})
    response = oip.post("/v2/models/mlp/infer", **kw)
    assert response.status_code == 200, response.text
    head_len = int(response.headers["inference-header-content-length"])
    head = orjson.loads(response.content[:head_len])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [3 * 3 * 4, 3 * 8]
    y = np.frombuffer(response.content, np.float32, 9, head_len).reshape(3, 3)
    label = np.frombuffer(response.content, np.int64, 3, head_len + sizes[0])
    np.testing.assert_allclose(y, mlp_expected(X)[0], rtol=1e-6)
    np.testing.assert_array_equal(label, mlp_expected(X)[1])


def _error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


def _json_input(name: str = "X", datatype: str = "FP32", shape: Any = None, data: Any = None) -> Any:
    shape = [1, 4] if shape is None else shape
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "data": data if data is not None else [1, 2, 3, 4],
    }


def test_bad_inputs_are_400_naming_the_input(oip: Oip) -> None:
    url = "/v2/models/mlp/infer"
    _error(oip.post(url, json={"inputs": [_json_input(datatype="FP64")]}), 400, "'X'", "FP32", "FP64")
    _error(
        oip.post(url, json={"inputs": [_json_input(shape=[1, 5], data=[1, 2, 3, 4, 5])]}),
        400,
        "'X'",
        "[-1, 4]",
        "[1, 5]",
    )
    _error(oip.post(url, json={"inputs": [_json_input(name="Z")]}), 400, "'Z'", "X")
    _error(oip.post(url, json={"inputs": [_json_input(shape=[2, 4])]}), 400, "'X'", "8 elements", "4")
    _error(oip.post(url, json={"inputs": [_json_input(datatype="FP99")]}), 400, "FP99")
    _error(oip.post(url, json={"inputs": [_json_input(data=[1, "x", 3, 4])]}), 400, "'X'")
    _error(oip.post(url, json={"inputs": []}), 400, "inputs")
    _error(oip.post(url, content=b"{not json"), 400, "malformed JSON")
    _error(
        oip.post(url, json={"inputs": [_json_input()], "outputs": [{"name": "nope"}]}),
        400,
        "'nope'",
        "Y, label",
    )
    _error(oip.post("/v2/models/nope/infer", json={"inputs": [_json_input()]}), 404, "nope")
    response = oip.get("/v2/models/mlp/infer")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_binary_sizes_that_do_not_add_up_are_400(oip: Oip) -> None:
    url = "/v2/models/mlp/infer"
    raw = X[:1].tobytes()
    short = _binary_request([("X", "FP32", [1, 4], raw)])
    short["content"] = short["content"][:-4]
    _error(oip.post(url, **short), 400, "'X'", "shorter than declared")
    _error(
        oip.post(url, **_binary_request([("X", "FP32", [1, 4], raw)], extra=b"junk")), 400, "4 bytes after"
    )
    _error(oip.post(url, **_binary_request([("X", "FP32", [2, 4], raw)])), 400, "'X'", "needs 32 bytes")
    too_long_header = _binary_request([("X", "FP32", [1, 4], raw)])
    too_long_header["headers"]["inference-header-content-length"] = "100000"
    _error(oip.post(url, **too_long_header), 400, "Inference-Header-Content-Length")


def test_bytes_with_bad_lengths_are_400(oip: Oip) -> None:
    url = "/v2/models/echo/infer"
    good = struct.pack("<I", 3) + b"abc"
    _error(oip.post(url, **_binary_request([("s", "BYTES", [1], struct.pack("<I", 9) + b"abc")])), 400, "'s'")
    _error(oip.post(url, **_binary_request([("s", "BYTES", [2], good)])), 400, "'s'", "at least 4")
    _error(
        oip.post(url, **_binary_request([("s", "BYTES", [2], good + b"\x01\x00")])), 400, "'s'", "element 1"
    )
    _error(oip.post(url, **_binary_request([("s", "BYTES", [1], good + b"\x00")])), 400, "'s'", "use 7")
    _error(oip.post(url, json={"inputs": [_json_input("s", "BYTES", [1], [5])]}), 400, "'s'", "strings")


def test_kserve_v1_predict(oip: Oip) -> None:
    response = oip.post("/v1/models/mlp_label:predict", json={"instances": X.tolist()})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": mlp_expected(X)[1].tolist()}
    assert oip.get("/v1/models/mlp_label").json() == {"name": "mlp_label", "ready": True}
    assert "mlp" in oip.get("/v1/models").json()["models"]
    _error(oip.post("/v1/models/mlp_label:predict", json={"rows": []}), 400, "instances")
    _error(oip.post("/v1/models/nope:predict", json={"instances": []}), 404, "nope")


def test_repository_index_load_unload(oip: Oip, tmp_path: Path) -> None:
    index = oip.client.get_model_repository_index()
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index
    oip.client.load_model("mlp")  # already served: returns once ready
    with pytest.raises(InferenceServerException, match="not declared"):
        oip.client.load_model("ghost")
    with pytest.raises(InferenceServerException, match="Authorization"):
        oip.client.unload_model("mlp_label")
    model_id = oip.api.model(mlp_onnx(tmp_path / "m2.onnx"), "mlp2", framework="onnx")
    auth = {"Authorization": f"Bearer {oip.token}"}
    config = orjson.dumps({"engine": "onnx", "model_id": model_id, "version": "3"}).decode()
    oip.client.load_model("mlp2", headers=auth, config=config)
    assert oip.client.is_model_ready("mlp2", "3")  # load returned once it was ready
    oip.client.unload_model("mlp2", headers=auth)
    assert not oip.client.is_model_ready("mlp2")
    assert oip.get("/v2/models/mlp2").status_code == 404
    bad = oip.post("/v2/repository/models/mlp2/unload", json={}, headers={"authorization": "Bearer wrong"})
    assert bad.status_code in (401, 403, 404)
