"""The queue's compact binary encoding of tensors and values (``MYQ1``).

One self-describing blob carries a value tree (the inputs of one request, or
one result) whose numeric arrays and byte strings travel as raw little-endian
buffers, not as JSON lists of floats::

    offset 0        4 bytes   magic  b"MYQ" + version byte 0x01
    offset 4        4 bytes   H      header length, unsigned 32-bit little-endian
    offset 8        H bytes   header UTF-8 JSON: {"v": <tree>, "b": [[dtype, shape, offset, nbytes], ...]}
    offset 8 + H    ...       buffer section: buffer i is bytes [offset, offset + nbytes) of it

In the tree, JSON values stand for themselves (objects, arrays, strings,
numbers, true/false/null); an object whose only key is ``"$t"`` refers to
buffer ``i`` (``{"$t": i}``); an object whose only key is ``"$d"`` wraps a
plain object that would otherwise look like a reference (escape). A buffer
entry ``[dtype, shape, offset, nbytes]`` gives the element type (``bool``,
``int8`` ... ``int64``, ``uint8`` ... ``uint64``, ``float16``, ``float32``,
``float64``, ``complex64``, ``complex128``, or ``bytes`` for a raw byte
string, whose shape is ``[]``), the dimensions (C order, row-major), and
where its bytes sit. ``nbytes`` must equal ``prod(shape) * itemsize``.
Buffers need no alignment or padding.

Input entries of the queue hold ``{"<name>": <tensor or value>, ...}``. See
``docs/queue.md`` for the stream fields around it and a worked example.
Decoding never executes anything from the blob (no pickle).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadRequest

MAGIC = b"MYQ\x01"
_HEAD = struct.Struct("<4sI")
MAX_HEADER = 64 * 1024 * 1024
DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
)
_NAMES: dict[str, str] = {}
"""numpy type code → the dtype name written on the wire (``dtype.name`` is slow to compute)."""
for _code in np.typecodes["All"]:
    if np.dtype(_code).name in DTYPES:
        _NAMES[_code] = np.dtype(_code).name
_REF = "$t"
_ESC = "$d"


class DecodeError(BadRequest):
    """A blob that is not a well-formed ``MYQ1`` value (or JSON object, for inputs)."""

    kind = "bad_request"


def encode(value: Any) -> bytes:
    """Encode ``value`` (dicts, lists, numpy arrays, bytes, str, numbers, None) as ``MYQ1``."""
    buffers: list[bytes] = []
    table: list[list[Any]] = []
    tree = _pack(value, buffers, table, [0])
    header = orjson.dumps({"v": tree, "b": table})
    return b"".join((_HEAD.pack(MAGIC, len(header)), header, *buffers))


def _pack(value: Any, buffers: list[bytes], table: list[list[Any]], offset: list[int]) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is np.ndarray:
        if value.dtype.char in _NAMES:
            return _add_array(value, buffers, table, offset)
        return (
            [_pack(v, buffers, table, offset) for v in value.tolist()]
            if value.ndim
            else _pack(value.item(), buffers, table, offset)
        )
    if isinstance(value, np.ndarray):  # subclasses (np.matrix...)
        return _pack(np.asarray(value), buffers, table, offset)
    if isinstance(value, np.generic):
        if value.dtype.char in _NAMES:
            return _add_array(np.asarray(value), buffers, table, offset)
        return _pack(value.item(), buffers, table, offset)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _add_array(np.asarray(value), buffers, table, offset)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        table.append(["bytes", [], offset[0], len(raw)])
        buffers.append(raw)
        offset[0] += len(raw)
        return {_REF: len(table) - 1}
    if isinstance(value, Mapping):
        packed = {str(k): _pack(v, buffers, table, offset) for k, v in value.items()}
        if len(packed) == 1 and next(iter(packed)) in (_REF, _ESC):
            return {_ESC: packed}
        return packed
    if isinstance(value, (list, tuple)):
        return [_pack(v, buffers, table, offset) for v in value]
    tolist = getattr(value, "tolist", None)  # pandas, torch tensors on CPU, ...
    if callable(tolist):
        return _pack(np.asarray(value), buffers, table, offset)
    raise TypeError(f"cannot encode a {type(value).__name__} for the queue")


def _add_array(array: np.ndarray, buffers: list[bytes], table: list[list[Any]], offset: list[int]) -> Any:
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    raw = array.tobytes()
    table.append([_NAMES[array.dtype.char], list(array.shape), offset[0], len(raw)])
    buffers.append(raw)
    offset[0] += len(raw)
    return {_REF: len(table) - 1}


def decode(blob: bytes) -> Any:
    """Decode a ``MYQ1`` blob; arrays come back as read-only numpy arrays over ``blob``."""
    if len(blob) < _HEAD.size:
        raise DecodeError(f"not a MYQ1 value: {len(blob)} bytes is shorter than its 8-byte head")
    magic, size = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise DecodeError(f"not a MYQ1 value: starts with {bytes(blob[:4])!r}, expected {MAGIC!r}")
    if size > MAX_HEADER or _HEAD.size + size > len(blob):
        raise DecodeError(f"MYQ1 header of {size} bytes runs past the end of a {len(blob)}-byte value")
    try:
        header = orjson.loads(blob[_HEAD.size : _HEAD.size + size])
        tree, table = header["v"], header.get("b", [])
        if not isinstance(table, list):
            raise TypeError("'b' is not a list")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise DecodeError(f"MYQ1 header is not valid: {exc}") from None
    data = memoryview(blob)[_HEAD.size + size :]
    arrays = [_buffer(i, entry, data) for i, entry in enumerate(table)]
    return _unpack(tree, arrays)


def _buffer(i: int, entry: Any, data: memoryview) -> Any:
    try:
        dtype, shape, offset, nbytes = entry
        shape = tuple(int(n) for n in shape)
        offset, nbytes = int(offset), int(nbytes)
    except (TypeError, ValueError):
        raise DecodeError(
            f"MYQ1 buffer {i}: expected [dtype, shape, offset, nbytes], got {entry!r}"
        ) from None
    if offset < 0 or nbytes < 0 or offset + nbytes > len(data):
        raise DecodeError(
            f"MYQ1 buffer {i}: bytes {offset}..{offset + nbytes} lie outside the "
            f"{len(data)}-byte buffer section"
        )
    raw = data[offset : offset + nbytes]
    if dtype == "bytes":
        return bytes(raw)
    if dtype not in DTYPES:
        raise DecodeError(f"MYQ1 buffer {i}: unknown dtype {dtype!r}")
    if any(n < 0 for n in shape):
        raise DecodeError(f"MYQ1 buffer {i}: negative dimension in shape {list(shape)}")
    dt = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * dt.itemsize
    if expected != nbytes:
        raise DecodeError(
            f"MYQ1 buffer {i}: shape {list(shape)} of {dtype} needs {expected} bytes, has {nbytes}"
        )
    array = np.frombuffer(raw, dtype=dt).reshape(shape)
    return array if dt.isnative else array.astype(dt.newbyteorder("="))


def _unpack(tree: Any, arrays: list[Any]) -> Any:
    if isinstance(tree, dict):
        if len(tree) == 1:
            if _REF in tree:
                index = tree[_REF]
                if not isinstance(index, int) or not 0 <= index < len(arrays):
                    raise DecodeError(f"MYQ1 reference to buffer {index!r}, which does not exist")
                return arrays[index]
            if _ESC in tree and isinstance(tree[_ESC], dict):
                return {k: _unpack(v, arrays) for k, v in tree[_ESC].items()}
        return {k: _unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unpack(v, arrays) for v in tree]
    return tree


def decode_inputs(blob: bytes) -> dict[str, Any]:
    """The body of one queue entry: a ``MYQ1`` object, or (for quick clients) a JSON object."""
    if blob[:4] == MAGIC:
        value = decode(blob)
    elif blob.lstrip()[:1] == b"{":
        try:
            value = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"field 'data' is neither MYQ1 nor valid JSON: {exc}") from None
    else:
        raise DecodeError(
            f"field 'data' is neither MYQ1 (magic {MAGIC!r}) nor a JSON object: starts with {blob[:8]!r}"
        )
    if not isinstance(value, dict):
        raise DecodeError(f"field 'data' must hold an object of named inputs, not a {type(value).__name__}")
    return value


def encode_inputs(tensors: Mapping[str, Any]) -> bytes:
    """Encode named inputs; lists become arrays when they are numeric and rectangular."""
    return encode({name: _as_tensor(v) for name, v in tensors.items()})


def _as_tensor(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and value:
        try:
            array = np.asarray(value)
        except ValueError:  # ragged
            return value
        if array.dtype.name in DTYPES:
            return array
    return value
