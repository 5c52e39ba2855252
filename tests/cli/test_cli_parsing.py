"""Pure parsing: clearml-style multi-value flags, tensor specs, key=value pairs."""

from __future__ import annotations

import pytest

from modelyard.cli._common import expand_multi_values, parse_pairs
from modelyard.cli.endpoints import build_tensors, parse_sizes
from modelyard.errors import BadRequest

MULTI = {"--tags", "--input-size"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tags", "a", "b", "--name", "n"], ["--tags", "a", "--tags", "b", "--name", "n"]),
        (["--tags", "a", "--tags", "b"], ["--tags", "a", "--tags", "b"]),
        (["--tags=a", "b"], ["--tags=a", "--tags", "b"]),
        (["--input-size", "-1", "4"], ["--input-size", "-1", "--input-size", "4"]),
        (["--input-size", "[-1]", "[1,4]"], ["--input-size", "[-1]", "--input-size", "[1,4]"]),
        (["--name", "a", "b"], ["--name", "a", "b"]),  # not a list option: untouched
        (["--tags", "a", "--", "b"], ["--tags", "a", "--", "b"]),
        (["--tags", "a", "--publish", "x"], ["--tags", "a", "--publish", "x"]),
    ],
)
def test_expand_multi_values(args: list[str], expected: list[str]) -> None:
    assert expand_multi_values(args, MULTI) == expected


def test_parse_sizes() -> None:
    assert parse_sizes(["1", "28", "28"], "--input-size") == [[1, 28, 28]]
    assert parse_sizes(["[1,4]", "[-1]"], "--input-size") == [[1, 4], [-1]]
    assert parse_sizes(None, "--input-size") == []
    with pytest.raises(BadRequest, match="--input-size"):
        parse_sizes(["[1,4]", "3"], "--input-size")
    with pytest.raises(BadRequest, match="--input-size"):
        parse_sizes(["four"], "--input-size")


def test_build_tensors_merges_over_existing() -> None:
    assert build_tensors("input", None, None, None) is None
    existing = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    assert build_tensors("input", None, ["float64"], None, existing) == [
        {"name": "x", "dtype": "float64", "shape": [-1, 4]}
    ]
    assert build_tensors("output", ["y"], None, None) == [{"name": "y"}]
    with pytest.raises(BadRequest, match="--input-name"):
        build_tensors("input", None, ["float32"], None)
    with pytest.raises(BadRequest, match="not a numpy dtype"):
        build_tensors("input", ["x"], ["fp-thirty-two"], None)


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "b=x", "c=[1,2]", "d=true", "e=a=b"], "--option") == {
        "a": 1,
        "b": "x",
        "c": [1, 2],
        "d": True,
        "e": "a=b",
    }
    with pytest.raises(BadRequest, match="key=value"):
        parse_pairs(["nokey"], "--option")
