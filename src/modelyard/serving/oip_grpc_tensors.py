"""Open Inference Protocol tensors in gRPC messages (KServe V2 ``inference.GRPCInferenceService``).

The protobuf twin of :mod:`modelyard.serving.oip_tensors`, on the messages
generated from Triton's ``grpc_service.proto`` that ship with
``tritonclient[grpc]``: the gRPC front decodes requests and encodes responses
here, the ``triton`` engine decodes a remote server's responses.

* Inputs come either as typed ``contents`` (``fp32_contents``, ``int64_contents``...,
  one field per datatype family) or ALL as ``raw_input_contents``, one entry per
  input in input order, in the binary extension's layout (little-endian; BYTES
  elements behind a 4-byte length). FP16 has no typed field: raw only, as the
  protocol says.
* Outputs always go as ``raw_output_contents``, as Triton answers: it is what
  ``tritonclient``'s ``InferResult.as_numpy`` reads, and it keeps number formatting
  out of the way. Responses from other servers may use typed ``contents``; both
  are read.

Raw input tensors are copied once out of the (immutable) message so that user
code gets writable arrays, as over HTTP (torch warns on read-only ones).

Declared shapes are checked as over HTTP before anything is allocated (against
the contents or raw bytes sent, and against ``limit`` elements: the gRPC receive
limit, which is ``Settings.max_body_bytes`` as for HTTP bodies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from modelyard.errors import BadRequest, InvalidInput, Unprocessable
from modelyard.serving.oip_encoding import tensor_bytes
from modelyard.serving.oip_limits import check_limit, element_count
from modelyard.serving.oip_tensors import (
    DATATYPES,
    InferRequest,
    datatype_of,
    decode_binary_tensor,
    requested_output,
)

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Datatype → the ``InferTensorContents`` field that carries it (FP16 has none: raw only)."""

_FIELDS = sorted(set(CONTENTS_FIELD.values()))

_RESPONSE_MIN_LIMIT = 1 << 20
"""Element limit of a remote server's answer: its size in bytes, but at least this."""


# -- parameters --------------------------------------------------------------------------------------
def parameters_from_pb(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` (or ``ModelRepositoryParameter``) as a plain dict."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def parameters_to_pb(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from a dict; values that are not bool, int,
    float or str (lists, dicts) go as their JSON text in ``string_param``."""
    for key, value in values.items():
        param = target[str(key)]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            param.string_param = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# -- tensors ---------------------------------------------------------------------------------------
def _filled(contents: Any) -> list[str]:
    return [f for f in _FIELDS if len(getattr(contents, f))]


def decode_contents(
    name: str, datatype: str, shape: list[int], contents: Any, *, limit: int, what: str = "input"
) -> np.ndarray:
    """A tensor from typed ``InferTensorContents``; InvalidInput naming the tensor when the
    data sits in another datatype's field, has the wrong count or does not fit the datatype,
    or the shape is over ``limit`` elements (all checked before allocating)."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"{what} {name!r}: {datatype} has no typed contents field in the gRPC protocol; "
            "send it in raw_input_contents"
        )
    values = getattr(contents, field)
    count = element_count(name, shape, what)
    if len(values) != count:
        others = [f for f in _filled(contents) if f != field]
        if others:
            raise InvalidInput(
                f"{what} {name!r} is {datatype}, whose data goes in contents.{field}, "
                f"but the data is in contents.{others[0]}"
            )
        raise InvalidInput(
            f"{what} {name!r}: shape {shape} needs {count} elements, contents.{field} has {len(values)}"
        )
    check_limit(name, shape, limit, what)
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
    else:
        try:
            arr = np.fromiter(values, dtype=DATATYPES[datatype], count=count)
        except (OverflowError, ValueError) as exc:
            raise InvalidInput(f"{what} {name!r}: a value does not fit {datatype} ({exc})") from None
    return arr.reshape(shape)


def _shape(raw: Any, name: str) -> list[int]:
    element_count(name, raw)  # the rank first: the message below shows the shape
    shape = [int(d) for d in raw]
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {shape}")
    return shape


def decode_infer_request(message: Any, *, limit: int) -> InferRequest:
    """A ``ModelInferRequest`` as the core's :class:`InferRequest` (what the HTTP route builds);
    ``limit``: the most elements one tensor may declare."""
    if not message.inputs:
        raise BadRequest("the inference request needs at least one input")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(message.inputs)} "
            "inputs: send one entry per input, in input order (or typed contents for all of them)"
        )
    request = InferRequest(inputs={}, datatypes={})
    if message.id:
        request.id = message.id
    request.parameters = parameters_from_pb(message.parameters)
    for i, tensor in enumerate(message.inputs):
        name, datatype = tensor.name, tensor.datatype
        if not name:
            raise BadRequest("each input needs a 'name'")
        if name in request.inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        if datatype not in DATATYPES:
            raise InvalidInput(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
        shape = _shape(tensor.shape, name)
        if raw:
            if _filled(tensor.contents):
                raise InvalidInput(
                    f"input {name!r} has typed contents although the request uses raw_input_contents: "
                    "use one or the other for all inputs"
                )
            data = raw[i]
            arr = decode_binary_tensor(
                name, datatype, shape, data, 0, len(data), limit=limit, source="raw_input_contents"
            )
            if not arr.flags.writeable:
                arr = arr.copy()
        else:
            arr = decode_contents(name, datatype, shape, tensor.contents, limit=limit)
        request.inputs[name] = arr
        request.datatypes[name] = datatype
        params = parameters_from_pb(tensor.parameters)
        if params:
            request.input_parameters[name] = params
    if message.outputs:
        request.outputs = [
            requested_output(o.name, parameters_from_pb(o.parameters)) for o in message.outputs
        ]
    return request


def encode_infer_response(
    outputs: dict[str, np.ndarray],
    names: list[str],
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    parameters: dict[str, Any] | None,
) -> Any:
    """A ``ModelInferResponse`` with the outputs ``names`` as raw contents."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    if parameters:
        parameters_to_pb(response.parameters, parameters)
    for name in names:
        arr = outputs[name]
        datatype = datatype_of(arr.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        response.raw_output_contents.append(tensor_bytes(arr, datatype))
    return response


def decode_infer_response(message: Any) -> dict[str, np.ndarray]:
    """A remote server's ``ModelInferResponse`` as ``name → array`` (raw or typed contents)."""
    raw = message.raw_output_contents
    limit = max(message.ByteSize(), _RESPONSE_MIN_LIMIT)  # as parse_infer_response: bytes sent
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.outputs):
        name, datatype, shape = tensor.name, tensor.datatype, [int(d) for d in tensor.shape]
        if datatype not in DATATYPES:
            raise Unprocessable(f"the remote server answered output {name!r} with datatype {datatype!r}")
        try:
            if i < len(raw):
                data = raw[i]
                source = "raw_output_contents"
                out[name] = decode_binary_tensor(
                    name, datatype, shape, data, 0, len(data), limit=limit, source=source, what="output"
                )
            else:
                out[name] = decode_contents(
                    name, datatype, shape, tensor.contents, limit=limit, what="output"
                )
        except InvalidInput as exc:
            raise Unprocessable(f"the remote server answered a malformed tensor: {exc.message}") from None
    return out
