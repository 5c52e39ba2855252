"""triton engine over gRPC against a real gRPC server that answers like other OIP servers do.

Forwarding to a second modelyard replica (HTTP and gRPC) is tested end to end in
tests/serving/test_batching_e2e.py. Here the remote is a small ``grpc.server`` with
Triton's generated servicer that answers the ways modelyard itself never does — typed
``contents`` instead of raw ones (as KServe and MLServer may), INTERNAL errors — so the
engine's decoding and error mapping for any OIP server are covered.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from tests.engines.conftest import predict_then_unload
from tests.servers import free_port
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError, Unavailable, Unprocessable


class Remote(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Model ``tagger``: FP32 ``x`` [-1, 2], BYTES ``tag`` [-1] → ``double``, ``tag`` as typed contents.

    Models ``refuses``, ``down`` and ``broken`` answer INVALID_ARGUMENT, UNAVAILABLE and INTERNAL.
    """

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        if request.name not in ("tagger", "refuses", "down", "broken"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform="test_remote",
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 2]),
                pb.ModelMetadataResponse.TensorMetadata(name="tag", datatype="BYTES", shape=[-1]),
            ],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name="double", datatype="FP32", shape=[-1, 2])],
        )

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        codes = {
            "refuses": grpc.StatusCode.INVALID_ARGUMENT,
            "down": grpc.StatusCode.UNAVAILABLE,
            "broken": grpc.StatusCode.INTERNAL,
        }
        if request.model_name in codes:
            context.abort(codes[request.model_name], f"{request.model_name} says no")
        by_name = {
            t.name: (t, raw) for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        tensor, raw = by_name["x"]
        x = np.frombuffer(raw, np.float32).reshape(list(tensor.shape))
        tag_tensor, tag_raw = by_name["tag"]
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        out = response.outputs.add(name="double", datatype="FP32", shape=list(x.shape))
        out.contents.fp32_contents.extend((x * 2).reshape(-1).tolist())
        tags = response.outputs.add(name="tag", datatype="BYTES", shape=list(tag_tensor.shape))
        tags.contents.bytes_contents.extend(_split_bytes(tag_raw))
        return response


def _split_bytes(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        n = int.from_bytes(raw[pos : pos + 4], "little")
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[str, Remote]]:
    servicer = Remote()
    server = grpc.server(ThreadPoolExecutor(4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def _engine(make_config: Any, model: str = "tagger", **options: Any) -> Any:
    config = make_config("triton", endpoint="ep", options={"model_name": model, **options})
    return default_engine_registry().create(config, None)


def test_grpc_scheme_forwards_and_reads_typed_contents(
    remote: tuple[str, Remote], make_config: Any, collect: Any
) -> None:
    address, servicer = remote
    engine = _engine(make_config, url=f"grpc://{address}")
    engine.load()
    assert engine.protocol == "grpc"
    meta = engine.metadata()
    assert meta["platform"] == "remote:test_remote"
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 2]}
    # float64 JSON-ish input is cast to the remote FP32; str tags go as BYTES
    data = {"x": [[1.0, 2.5], [-3.0, 0.0]], "tag": np.array(["a", "h\u00e9"])}
    out = predict_then_unload(engine, data, collect)
    np.testing.assert_array_equal(out["double"], np.array([[2.0, 5.0], [-6.0, 0.0]], np.float32))
    assert out["double"].dtype == np.float32
    assert out["tag"].tolist() == [b"a", "h\u00e9".encode()]
    sent = servicer.requests[-1]
    assert [(t.name, t.datatype, list(t.shape)) for t in sent.inputs] == [
        ("x", "FP32", [2, 2]),
        ("tag", "BYTES", [2]),
    ]


def test_protocol_option_with_a_bare_address(
    remote: tuple[str, Remote], make_config: Any, collect: Any
) -> None:
    address, _ = remote
    engine = _engine(make_config, url=address, protocol="grpc")
    engine.load()
    data = {"x": np.ones((1, 2), np.float32), "tag": np.array([b"z"], object)}
    out = predict_then_unload(engine, data, collect)
    np.testing.assert_array_equal(out["double"], [[2.0, 2.0]])


def test_remote_errors_map_like_the_http_path(
    remote: tuple[str, Remote], make_config: Any, collect: Any
) -> None:
    address, _ = remote
    data = {"x": np.ones((1, 2), np.float32), "tag": np.array([b"z"], object)}
    cases: list[tuple[str, type[Exception], str]] = [
        ("refuses", InvalidInput, "remote model 'refuses' refused the input: refuses says no"),
        ("down", Unavailable, "UNAVAILABLE: down says no"),
        ("broken", Unprocessable, "remote model 'broken' answered INTERNAL: broken says no"),
    ]
    for model, error, message in cases:
        engine = _engine(make_config, model=model, url=f"grpc://{address}")
        engine.load()
        with pytest.raises(error, match=message) as info:
            predict_then_unload(engine, data, collect)
        if error is Unavailable:
            assert info.value.retry_after == 1  # type: ignore[attr-defined]
    engine = _engine(make_config, url=f"grpc://{address}")
    engine.load()
    with pytest.raises(InvalidInput, match="remote model 'tagger' has no input 'nope'"):
        predict_then_unload(engine, {"nope": np.ones(1)}, collect)
    with pytest.raises(InvalidInput, match=r"input 'tag' for remote model 'tagger'.*BYTES"):
        predict_then_unload(engine, {"x": np.ones((1, 2)), "tag": np.array([1, 2])}, collect)


def test_load_failures_say_why(remote: tuple[str, Remote], make_config: Any) -> None:
    address, _ = remote
    closed = f"127.0.0.1:{free_port()}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": f"grpc://{closed}", "timeout_s": 2}, f"cannot reach grpc://{closed}"),
        ({"url": f"grpc://{address}", "model_name": "ghost"}, "has no model 'ghost' ready \\(NOT_FOUND"),
        ({"url": f"http://{address}", "protocol": "grpc"}, "protocol 'grpc' needs url=grpc://host:port"),
        ({"url": f"grpc://{address}", "protocol": "http"}, "is a gRPC address but protocol is 'http'"),
        ({"url": f"grpc://{address}", "protocol": "carrier-pigeon"}, "neither 'http' nor 'grpc'"),
        ({"url": "grpc://"}, "needs url=grpc://host:port"),
        ({"url": address}, "url=http://host:port .* or grpc://host:port"),
    ]
    for options, message in cases:
        engine = _engine(make_config, **{"model_name": "tagger", **options})
        with pytest.raises(ModelLoadError, match=message):
            engine.load()
