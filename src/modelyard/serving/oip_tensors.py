"""Open Inference Protocol tensors: datatypes, decoding (requests, remote answers), input checks.

Transport-free (bytes in, bytes out); encoding is :mod:`modelyard.serving.oip_encoding`.
:mod:`modelyard.serving.oip` is the HTTP adapter, :mod:`modelyard.serving.oip_grpc_tensors`
builds the gRPC messages from the same pieces (datatypes, raw tensor bytes, output
selection), the ``triton`` engine is a client of both.

* JSON tensors: ``data`` nested or flat, row-major; BYTES elements are strings.
* Binary tensors (Triton's binary tensor data extension): the JSON header is
  followed by each binary input's bytes in input order; ``binary_data_size``
  gives each tensor's length, ``Inference-Header-Content-Length`` the header's.
  Fixed-size tensors are read with ``np.frombuffer`` straight on the request
  body (no copy; a copy only when an offset is not aligned for the dtype);
  BYTES tensors are 4-byte little-endian lengths followed by the bytes.

BYTES tensors reach user code as numpy object arrays of ``bytes`` (as Triton's
Python backend does), whichever way they were sent.

Nothing is allocated from a declared shape before it is checked against what was
sent: a fixed-size binary tensor needs exactly ``count * itemsize`` bytes, a BYTES
one at least 4 bytes per element, a JSON one as many elements as its parsed
``data``; then the shape is held to ``limit`` elements
(:mod:`modelyard.serving.oip_limits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadRequest, InvalidInput, Unprocessable
from modelyard.serving.oip_limits import brief, check_limit, element_count

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
"""OIP datatype → numpy dtype (little-endian, as the binary extension requires)."""

_RESPONSE_MIN_LIMIT = 1 << 20
"""The element limit of a remote server's answer is its length in bytes, but at least this."""

_BY_KIND_SIZE = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}


def datatype_of(dtype: Any) -> str:
    """The OIP datatype of a numpy dtype (or dtype name: ``float32``, ``str``); BYTES for text."""
    dt = np.dtype(dtype)
    if dt.kind in "OUS":
        return "BYTES"
    name = _BY_KIND_SIZE.get((dt.kind, dt.itemsize))
    if name is None:
        raise Unprocessable(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


@dataclass
class TensorMeta:
    """One input or output as model metadata describes it."""

    name: str
    datatype: str | None = None
    shape: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype or "BYTES", "shape": self.shape or [-1]}


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None
    """``parameters.binary_data`` of the output; ``None`` follows the request's default."""


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    input_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    """``parameters.binary_data_output``: every output binary unless an output says otherwise."""


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {brief(value)}"
        )
    return value


def _flatten_strings(data: Any, name: str) -> list[bytes]:
    out: list[bytes] = []
    stack = [data] if not isinstance(data, list) else list(reversed(data))
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item.encode())
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
    return out


def decode_json_tensor(
    name: str, datatype: str, shape: list[int], data: Any, *, limit: int, what: str = "input"
) -> np.ndarray:
    """A tensor from JSON ``data`` (nested or flat): its elements are counted on what was
    parsed (bounded by the body) before the declared shape is checked and applied."""
    count = element_count(name, shape, what)
    if datatype == "BYTES":
        items = _flatten_strings(data, name)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
    else:
        try:
            arr = np.asarray(data, dtype=DATATYPES[datatype])
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(
                f"{what} {name!r}: data is not a rectangular array of {datatype} values ({exc})"
            ) from None
    if arr.size != count:
        raise InvalidInput(f"{what} {name!r}: shape {shape} needs {count} elements, data has {arr.size}")
    check_limit(name, shape, limit, what)
    return arr.reshape(shape)


def decode_binary_tensor(
    name: str,
    datatype: str,
    shape: list[int],
    body: bytes | bytearray | memoryview,
    offset: int,
    size: int,
    *,
    limit: int,
    source: str = "binary_data_size",
    what: str = "input",
) -> np.ndarray:
    """A tensor from ``size`` raw bytes at ``offset``; ``source`` names where the size came from
    in error messages (``binary_data_size`` over HTTP, ``raw_input_contents`` over gRPC).
    The declared count is checked against ``size`` before anything is allocated."""
    count = element_count(name, shape, what)
    if datatype == "BYTES":
        if count > size // 4:
            raise InvalidInput(
                f"{what} {name!r}: shape {shape} declares {count} BYTES elements but {source} is "
                f"{size} bytes (each element needs at least 4)"
            )
        check_limit(name, shape, limit, what)
        return _decode_bytes(name, shape, memoryview(body)[offset : offset + size], count, source)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"{what} {name!r}: {source} is {size} bytes but shape {shape} of {datatype} "
            f"needs {expected} bytes"
        )
    check_limit(name, shape, limit, what)
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if offset % dtype.alignment:
        arr = arr.copy()  # unaligned in the body: one copy so frameworks get an aligned array
    return arr.reshape(shape)


def _decode_bytes(name: str, shape: list[int], view: memoryview, count: int, source: str) -> np.ndarray:
    size = len(view)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} of {count}: its 4-byte length runs past the "
                f"tensor's {size} bytes"
            )
        length = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + length > size:
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} declares {length} bytes but only {size - pos} remain"
            )
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != size:
        raise InvalidInput(
            f"input {name!r}: {source} is {size} bytes but the {count} BYTES elements "
            f"of shape {shape} use {pos}"
        )
    return out.reshape(shape)


def parse_infer_request(body: bytes | bytearray, header_length: int | None, *, limit: int) -> InferRequest:
    """Decode an inference request (JSON, or JSON header + binary tensors); ``limit``: the most
    elements one tensor may declare (the body limit, see the module's docstring)."""
    total = len(body)
    if header_length is None:
        header_length = total
    elif not 0 < header_length <= total:
        raise BadRequest(f"Inference-Header-Content-Length is {header_length} but the body has {total} bytes")
    try:
        header = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON inference request: {exc}") from None
    header = _dict(header, "the inference request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("the inference request needs a non-empty 'inputs' list")
    request = InferRequest(inputs={}, datatypes={})
    if header.get("id") is not None:
        request.id = str(header["id"])
    request.parameters = _dict(header.get("parameters"), "'parameters'")
    request.binary_output = bool(request.parameters.get("binary_data_output", False))
    offset = header_length
    for raw in raw_inputs:
        raw = _dict(raw, "each input")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a 'name'")
        if name in request.inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = raw.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list is not even hashable
            raise InvalidInput(
                f"input {name!r}: datatype {brief(datatype)} is not one of {', '.join(DATATYPES)}"
            )
        shape = _shape(raw.get("shape"), name)
        params = _dict(raw.get("parameters"), f"parameters of input {name!r}")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > total:
                raise InvalidInput(
                    f"input {name!r}: binary data is shorter than declared: binary_data_size {size} "
                    f"but only {total - offset} bytes remain in the body"
                )
            arr = decode_binary_tensor(name, datatype, shape, body, offset, size, limit=limit)
            offset += size
        elif "data" in raw:
            arr = decode_json_tensor(name, datatype, shape, raw["data"], limit=limit)
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        request.inputs[name] = arr
        request.datatypes[name] = datatype
        if params:
            request.input_parameters[name] = params
    if offset != total:
        raise InvalidInput(
            f"the body has {total - offset} bytes after the binary tensors that the inputs declare "
            f"(binary_data_size adds up to {offset - header_length})"
        )
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list")
        request.outputs = []
        for raw in outputs:
            raw = _dict(raw, "each requested output")
            name = raw.get("name")
            params = _dict(raw.get("parameters"), f"parameters of output {name!r}")
            request.outputs.append(requested_output(name, params))
    return request


def requested_output(name: Any, params: dict[str, Any]) -> RequestedOutput:
    """One entry of a request's ``outputs`` (both transports): a name, no classification."""
    if not isinstance(name, str) or not name:
        raise BadRequest("each requested output needs a 'name'")
    if params.get("classification"):
        raise BadRequest(f"output {name!r}: the classification extension is not supported")
    binary = params.get("binary_data")
    return RequestedOutput(name, None if binary is None else bool(binary))


def shape_matches(shape: Sequence[int], expected: Sequence[int]) -> bool:
    """``-1`` matches any size; a declared shape without the batch dimension also matches."""
    if len(shape) == len(expected) + 1:
        shape = shape[1:]
    return len(shape) == len(expected) and all(e < 0 or e == s for s, e in zip(shape, expected, strict=True))


def check_inputs(request: InferRequest, declared: list[TensorMeta], model: str) -> None:
    """400 naming the input when names, datatypes or shapes differ from the model's metadata."""
    if not declared:
        return
    names = {d.name for d in declared}
    for name in request.inputs:
        if name not in names:
            raise InvalidInput(
                f"model {model!r} has no input {name!r} (inputs: {', '.join(d.name for d in declared)})"
            )
    for meta in declared:
        if meta.name not in request.inputs:
            raise InvalidInput(f"input {meta.name!r} is missing: model {model!r} expects {_expects(meta)}")
        got = request.datatypes[meta.name]
        if meta.datatype and meta.datatype in DATATYPES and got != meta.datatype:
            raise InvalidInput(f"input {meta.name!r} expects datatype {meta.datatype}, got {got}")
        shape = list(request.inputs[meta.name].shape)
        if meta.shape and not shape_matches(shape, meta.shape):
            raise InvalidInput(f"input {meta.name!r} expects shape {meta.shape}, got {shape}")


def _expects(meta: TensorMeta) -> str:
    return f"{meta.datatype or 'any datatype'} {meta.shape if meta.shape else '[any shape]'}"


def parse_infer_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """An OIP server's response as ``name → array`` (JSON or binary outputs)."""
    header_length = len(body) if header_length is None else header_length
    try:
        response = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the remote server answered malformed JSON: {exc}") from None
    # each element of a non-empty tensor takes at least a byte of the body; an empty one's other
    # dimensions get some room (the remote server is configured, not an anonymous caller)
    limit = max(len(body), _RESPONSE_MIN_LIMIT)
    out: dict[str, np.ndarray] = {}
    offset = header_length
    for tensor in response.get("outputs") or []:
        name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[name] = decode_binary_tensor(
                name, datatype, shape, body, offset, size, limit=limit, what="output"
            )
            offset += size
        else:
            out[name] = decode_json_tensor(
                name, datatype, shape, tensor.get("data"), limit=limit, what="output"
            )
    return out
