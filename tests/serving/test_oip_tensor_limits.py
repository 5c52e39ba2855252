"""Declared tensor shapes are checked against what was sent, and held to the body limit, before
anything is allocated: JSON, binary (HTTP) and gRPC (typed and raw contents), requests and the
``triton`` engine's remote answers alike. Transport-free: the decoders themselves."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from modelyard.errors import BadRequest, InvalidInput, Unprocessable
from modelyard.serving.oip_grpc_tensors import decode_infer_request, decode_infer_response
from modelyard.serving.oip_limits import parse_header_length
from modelyard.serving.oip_repository import Repository
from modelyard.serving.oip_tensors import parse_infer_request, parse_infer_response

LIMIT = 8 * 1024 * 1024
HUGE = 4611686018427387904  # 2**62


def _binary(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return head + raw, len(head)


def _json(name: str, datatype: str, shape: Any, data: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})


def _bounded(call: Any, error: type[Exception], *fragments: str) -> str:
    """``call`` raises ``error`` naming ``fragments``, fast and without allocating much."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert peak < 1024 * 1024, f"{peak} bytes allocated before refusing: {message}"
    assert elapsed < 0.5, f"{elapsed:.2f} s before refusing: {message}"
    return message


def test_binary_bytes_shape_is_checked_against_the_bytes_sent_before_allocating() -> None:
    body, head = _binary("x", "BYTES", [100000000], b"\x00" * 12)
    message = _bounded(lambda: parse_infer_request(body, head, limit=LIMIT), InvalidInput)
    assert message == (
        "input 'x': shape [100000000] declares 100000000 BYTES elements but binary_data_size is 12 bytes "
        "(each element needs at least 4)"
    )
    for shape in ([10**11], [2**63]):
        body, head = _binary("x", "BYTES", shape, b"\x00" * 12)
        _bounded(
            lambda b=body, h=head: parse_infer_request(b, h, limit=LIMIT), InvalidInput, f"{shape[0]} BYTES"
        )


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "BOOL"])
def test_shapes_numpy_cannot_reshape_to_are_refused_json_and_binary(datatype: str) -> None:
    for shape in ([0, HUGE], [HUGE, 0], [0, LIMIT, 2], [0, 2**31, 2**31, 2**31]):
        body = _json("e", datatype, shape, [])
        _bounded(
            lambda b=body: parse_infer_request(b, None, limit=LIMIT), InvalidInput, "'e'", "out of range"
        )
        body, head = _binary("e", datatype, shape, b"")
        _bounded(
            lambda b=body, h=head: parse_infer_request(b, h, limit=LIMIT), InvalidInput, "'e'", "out of range"
        )
    # at the limit an empty tensor is fine: numpy can hold it
    request = parse_infer_request(_json("e", datatype, [0, LIMIT], []), None, limit=LIMIT)
    assert request.inputs["e"].shape == (0, LIMIT)


def test_too_many_dimensions_are_refused() -> None:
    body = _json("r", "FP32", [1] * 65, [1])
    _bounded(lambda: parse_infer_request(body, None, limit=LIMIT), InvalidInput, "'r'", "65 dimensions")
    assert parse_infer_request(_json("r", "FP32", [1] * 32, [1]), None, limit=LIMIT).inputs["r"].ndim == 32


def test_a_long_shape_is_not_echoed_whole_in_the_message() -> None:
    body = _json("x", "FP32", [-1] * 100000, [])
    with pytest.raises(InvalidInput) as info:
        parse_infer_request(body, None, limit=LIMIT)
    assert "'x'" in info.value.message and "100000 items" in info.value.message
    assert len(info.value.message) < 400


def test_honest_tensors_still_decode() -> None:
    body, head = _binary("s", "BYTES", [2], b"\x01\x00\x00\x00a\x00\x00\x00\x00")
    assert parse_infer_request(body, head, limit=LIMIT).inputs["s"].tolist() == [b"a", b""]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, head = _binary("x", "FP32", [2, 3], x.tobytes())
    np.testing.assert_array_equal(parse_infer_request(body, head, limit=LIMIT).inputs["x"], x)


def test_inference_header_content_length_takes_ascii_digits_only() -> None:
    assert parse_header_length("") is None
    assert parse_header_length("123") == 123
    for value in ("²", "١٢", "12a", "-1", "9" * 5000):
        with pytest.raises(BadRequest, match=r"Inference-Header-Content-Length .*ASCII digits"):
            parse_header_length(value)


# -- gRPC ------------------------------------------------------------------------------------------
def _grpc(*inputs: Any, raw: list[bytes] | None = None) -> Any:
    return pb.ModelInferRequest(model_name="m", inputs=list(inputs), raw_input_contents=raw or [])


def _in(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def test_grpc_raw_bytes_shape_is_checked_against_the_bytes_sent() -> None:
    message = _grpc(_in("x", "BYTES", [100000000]), raw=[b"\x00" * 12])
    text = _bounded(lambda: decode_infer_request(message, limit=LIMIT), InvalidInput)
    assert text == (
        "input 'x': shape [100000000] declares 100000000 BYTES elements but raw_input_contents is 12 bytes "
        "(each element needs at least 4)"
    )


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "INT64"])
def test_grpc_shapes_numpy_cannot_reshape_to_are_refused(datatype: str) -> None:
    typed = _grpc(_in("e", datatype, [0, HUGE]))
    _bounded(lambda: decode_infer_request(typed, limit=LIMIT), InvalidInput, "'e'", "out of range")
    raw = _grpc(_in("e", datatype, [0, HUGE, 3]), raw=[b""])
    _bounded(lambda: decode_infer_request(raw, limit=LIMIT), InvalidInput, "'e'", "out of range")
    deep = _grpc(_in("e", datatype, [1] * 65))
    _bounded(lambda: decode_infer_request(deep, limit=LIMIT), InvalidInput, "'e'", "65 dimensions")


def test_remote_answers_with_impossible_shapes_are_unprocessable_or_invalid() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="FP32", shape=[0, HUGE])
    response.raw_output_contents.append(b"")
    _bounded(lambda: decode_infer_response(response), Unprocessable, "'y'", "out of range")
    bytes_response = pb.ModelInferResponse(model_name="m")
    bytes_response.outputs.add(name="s", datatype="BYTES", shape=[100000000])
    bytes_response.raw_output_contents.append(b"\x00" * 12)
    _bounded(lambda: decode_infer_response(bytes_response), Unprocessable, "output 's'", "at least 4")
    head = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [0, HUGE], "data": []}]})
    _bounded(lambda: parse_infer_response(head, None), InvalidInput, "output 'y'", "out of range")


# -- the repository extension's parameters ---------------------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ([1], "'parameters' must be a JSON object"),
        ("x", "'parameters' must be a JSON object"),
        ({"config": "not json"}, "parameters.config is not valid JSON"),
        ({"config": "[1]"}, "at least 'engine'"),
        ({"config": 5}, "at least 'engine'"),
    ],
)
def test_repository_load_parameters_are_checked_first(parameters: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        Repository._endpoint_spec(parameters)
    assert fragment in info.value.message
    assert Repository._endpoint_spec({}) is None
    assert Repository._endpoint_spec({"config": '{"engine": "onnx"}'}) == {"engine": "onnx"}


@pytest.mark.parametrize("datatype", [[], {}, ["FP32"], 5, None])
def test_a_datatype_that_is_not_a_string_is_invalid_input(datatype: Any) -> None:
    with pytest.raises(InvalidInput, match=r"input 'd': datatype .* is not one of BOOL"):
        parse_infer_request(_json("d", datatype, [1], [1]), None, limit=LIMIT)
