"""The MYQ1 binary encoding: round trips, compactness, and clear errors on malformed blobs."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from modelyard.queue import codec
from modelyard.queue.codec import DecodeError, decode, decode_inputs, encode, encode_inputs


def test_round_trip_of_tensors_and_plain_values() -> None:
    value = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([1, 2, 3], dtype=np.int64),
        "mask": np.array([True, False]),
        "half": np.ones((2, 2), dtype=np.float16),
        "scalar": np.float64(2.5),
        "raw": b"\x00\x01binary",
        "text": "héllo",
        "n": 7,
        "f": 1.25,
        "none": None,
        "flag": True,
        "nested": {"list": [1, "a", np.int32(5)], "empty": []},
    }
    out = decode(encode(value))
    assert out["x"].dtype == np.float32 and out["x"].shape == (3, 4)
    np.testing.assert_array_equal(out["x"], value["x"])
    np.testing.assert_array_equal(out["ids"], value["ids"])
    assert out["mask"].dtype == np.bool_ and out["mask"].tolist() == [True, False]
    assert out["half"].dtype == np.float16
    assert out["scalar"].shape == () and float(out["scalar"]) == 2.5
    assert out["raw"] == b"\x00\x01binary"
    assert (out["text"], out["n"], out["f"], out["none"], out["flag"]) == ("héllo", 7, 1.25, None, True)
    assert out["nested"]["list"][:2] == [1, "a"] and int(out["nested"]["list"][2]) == 5
    assert out["nested"]["empty"] == []


def test_values_that_look_like_references_are_escaped() -> None:
    value = {"a": {"$t": 0}, "b": {"$d": {"x": 1}}, "c": [np.zeros(2)]}
    out = decode(encode(value))
    assert out["a"] == {"$t": 0}
    assert out["b"] == {"$d": {"x": 1}}
    np.testing.assert_array_equal(out["c"][0], np.zeros(2))


def test_layout_matches_the_documented_format() -> None:
    blob = encode({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    magic, size = struct.unpack_from("<4sI", blob)
    assert magic == b"MYQ\x01"
    header = orjson.loads(blob[8 : 8 + size])
    assert header == {"v": {"x": {"$t": 0}}, "b": [["float32", [1, 2], 0, 8]]}
    assert blob[8 + size :] == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_a_hand_built_blob_decodes() -> None:
    """What a client in another language produces: JSON header + little-endian buffers."""
    header = orjson.dumps({"v": {"x": {"$t": 0}, "name": "a"}, "b": [["int32", [3], 0, 12]]})
    blob = b"MYQ\x01" + struct.pack("<I", len(header)) + header + struct.pack("<3i", 1, -2, 3)
    out = decode(blob)
    assert out["name"] == "a" and out["x"].tolist() == [1, -2, 3]


def test_big_endian_arrays_are_stored_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    blob = encode({"x": array})
    assert blob.endswith(np.arange(4, dtype="<i4").tobytes())
    assert decode(blob)["x"].tolist() == [0, 1, 2, 3]


def test_much_smaller_than_json_floats() -> None:
    x = np.random.default_rng(0).normal(size=(64, 32))
    assert len(encode({"x": x})) < 0.5 * len(orjson.dumps({"x": x.tolist()}))


def test_encode_inputs_turns_numeric_lists_into_arrays() -> None:
    out = decode_inputs(encode_inputs({"x": [[1.0, 2.0]], "words": ["a", "b"], "ragged": [[1], [2, 3]]}))
    assert isinstance(out["x"], np.ndarray) and out["x"].shape == (1, 2)
    assert out["words"] == ["a", "b"]
    assert out["ragged"] == [[1], [2, 3]]


def test_json_inputs_are_accepted_for_quick_clients() -> None:
    assert decode_inputs(b'{"x": [[1, 2]]}') == {"x": [[1, 2]]}


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than its 8-byte head"),
        (b"XXXX\x00\x00\x00\x00", "expected"),
        (b"MYQ\x01" + struct.pack("<I", 100) + b"{}", "runs past the end"),
        (b"MYQ\x01" + struct.pack("<I", 2) + b"[]", "header is not valid"),
        (b"MYQ\x01" + struct.pack("<I", 5) + b"{nope", "header is not valid"),
    ],
)
def test_malformed_blobs_give_clear_errors(blob: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(blob)


def _blob(tree: object, table: list[object], data: bytes = b"") -> bytes:
    header = orjson.dumps({"v": tree, "b": table})
    return b"MYQ\x01" + struct.pack("<I", len(header)) + header + data


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_blob({"x": {"$t": 0}}, [["float32", [2], 0, 8]], b"\x00" * 4), "outside"),
        (_blob({"x": {"$t": 0}}, [["float32", [3], 0, 8]], b"\x00" * 8), "needs 12 bytes, has 8"),
        (_blob({"x": {"$t": 0}}, [["object", [1], 0, 8]], b"\x00" * 8), "unknown dtype 'object'"),
        (_blob({"x": {"$t": 3}}, []), "buffer 3, which does not exist"),
        (_blob({"x": 1}, [["float32"]]), r"expected \[dtype, shape, offset, nbytes\]"),
    ],
)
def test_bad_buffers_give_clear_errors(blob: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(blob)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"garbage", "neither MYQ1"),
        (b"{not json", "neither MYQ1 nor valid JSON"),
        (encode([1, 2]), "object of named inputs"),
    ],
)
def test_decode_inputs_errors(blob: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_inputs(blob)


def test_unencodable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="cannot encode a object"):
        encode({"x": object()})
    assert codec.decode(codec.encode(float("nan"))).dtype == np.float64


def test_the_docs_example_is_byte_exact() -> None:
    blob = encode_inputs({"x": np.array([[1, 2]], dtype=np.float32), "name": "a"})
    header = b'{"v":{"x":{"$t":0},"name":"a"},"b":[["float32",[1,2],0,8]]}'
    assert blob == bytes.fromhex("4D595101 3B000000") + header + bytes.fromhex("0000803F 00000040")
