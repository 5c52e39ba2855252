"""Open Inference Protocol tensors onto the wire: response bodies, and requests to a remote server.

The other half of :mod:`modelyard.serving.oip_tensors` (datatypes, decoding, input checks).
What an endpoint returned becomes named arrays (:func:`named_outputs`), the requested ones are
picked (:func:`select_outputs`) and encoded as JSON ``data`` or binary tensors behind the JSON
header (:func:`encode_infer_response`); the ``triton`` engine builds its requests the same way
(:func:`encode_infer_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelyard.errors import InvalidInput, Unprocessable
from modelyard.serving.oip_tensors import DATATYPES, InferRequest, TensorMeta, datatype_of


def _as_array(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        numpy = getattr(value, "numpy", None)  # torch / tensorflow tensors
        if callable(numpy) and hasattr(value, "shape"):
            detach = getattr(value, "detach", None)
            value = (detach().cpu() if callable(detach) else value).numpy()
        value = np.asarray(value)
    if value.dtype == object:
        flat = value.reshape(-1)
        if not all(isinstance(x, str | bytes) for x in flat):
            raise Unprocessable(f"output {name!r} is not a tensor (it holds {type(flat[0]).__name__} values)")
    return value


def named_outputs(value: Any, declared: list[TensorMeta]) -> dict[str, np.ndarray]:
    """What the endpoint returned as ``name → array``.

    A dict maps by key; a tuple/list of arrays maps by position onto several declared
    outputs; anything else is ONE tensor named after the single declared output, else
    ``output0``. Declared datatypes are applied (``int64`` declared: the array is cast).
    """
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif (
        isinstance(value, tuple | list)
        and len(declared) > 1
        and len(value) == len(declared)
        and all(hasattr(v, "shape") for v in value)
    ):
        pairs = [(d.name, v) for d, v in zip(declared, value, strict=True)]
    else:
        pairs = [(declared[0].name if len(declared) == 1 else "output0", value)]
    wanted = {d.name: d.datatype for d in declared}
    out: dict[str, np.ndarray] = {}
    for name, v in pairs:
        arr = _as_array(v, name)
        datatype = wanted.get(name)
        if datatype and datatype != "BYTES" and datatype in DATATYPES and arr.dtype.kind not in "OUS":
            arr = arr.astype(DATATYPES[datatype], copy=False)
        out[name] = arr
    return out


def _bytes_items(arr: np.ndarray) -> list[bytes]:
    return [x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1).tolist()]


def _binary(arr: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        parts: list[Any] = []
        for item in _bytes_items(arr):
            parts.append(len(item).to_bytes(4, "little"))
            parts.append(item)
        return parts
    data = np.ascontiguousarray(arr, dtype=DATATYPES[datatype])
    return [data.data.cast("B")]


def tensor_bytes(arr: np.ndarray, datatype: str) -> bytes:
    """The tensor's raw bytes as the binary extension and gRPC's raw contents carry them:
    little-endian, row-major; BYTES elements each behind a 4-byte little-endian length."""
    return b"".join(_binary(arr, datatype))


def _json_data(arr: np.ndarray, datatype: str, name: str) -> Any:
    if datatype == "BYTES":
        try:
            return [b.decode() for b in _bytes_items(arr)]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output {name!r} holds bytes that are not UTF-8: request it with binary_data"
            ) from None
    flat = np.ascontiguousarray(arr.reshape(-1))
    if datatype == "FP16":
        flat = flat.astype(np.float32)
    return flat


def _encode_tensor(
    name: str, arr: np.ndarray, datatype: str, binary: bool, parts: list[Any]
) -> dict[str, Any]:
    """One tensor's JSON entry; as binary, its bytes go to ``parts`` (to follow the header)."""
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if binary:
        chunk = _binary(arr, datatype)
        tensor["parameters"] = {"binary_data_size": sum(len(p) for p in chunk)}
        parts.extend(chunk)
    else:
        tensor["data"] = _json_data(arr, datatype, name)
    return tensor


def select_outputs(
    outputs: dict[str, np.ndarray], request: InferRequest, model_name: str
) -> list[tuple[str, bool]]:
    """The outputs to answer, in order, each with whether it goes binary: the requested ones
    (400 naming an unknown one), else all of them."""
    if request.outputs is None:
        return [(name, request.binary_output) for name in outputs]
    selected: list[tuple[str, bool]] = []
    for wanted in request.outputs:
        if wanted.name not in outputs:
            raise InvalidInput(
                f"output {wanted.name!r} is not an output of model {model_name!r} "
                f"(outputs: {', '.join(outputs)})"
            )
        selected.append((wanted.name, request.binary_output if wanted.binary is None else wanted.binary))
    return selected


@dataclass
class EncodedResponse:
    body: bytes
    header_length: int | None
    """Set (and sent as ``Inference-Header-Content-Length``) when binary tensors follow the JSON."""


def encode_infer_response(
    outputs: dict[str, np.ndarray],
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    parameters: dict[str, Any] | None = None,
) -> EncodedResponse:
    """The response body; requested outputs only (400 for an unknown one), binary where asked."""
    selected = select_outputs(outputs, request, model_name)
    tensors: list[dict[str, Any]] = []
    binary: list[Any] = []
    for name, as_binary in selected:
        arr = outputs[name]
        tensors.append(_encode_tensor(name, arr, datatype_of(arr.dtype), as_binary, binary))
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *binary]), len(header))


def encode_infer_request(
    inputs: dict[str, np.ndarray],
    datatypes: dict[str, str] | None = None,
    *,
    outputs: list[str] | None = None,
    binary: bool = True,
) -> tuple[bytes, int | None]:
    """A request body for an OIP server (the ``triton`` engine): ``(body, header_length)``."""
    tensors = []
    parts: list[Any] = []
    for name, value in inputs.items():
        arr = _as_array(value, name)
        datatype = (datatypes or {}).get(name) or datatype_of(arr.dtype)
        tensors.append(_encode_tensor(name, arr, datatype, binary, parts))
    request: dict[str, Any] = {"inputs": tensors}
    if outputs is not None:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    else:
        request["parameters"] = {"binary_data_output": binary}
    header = orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)
    if not parts:
        return header, None
    return b"".join([header, *parts]), len(header)
