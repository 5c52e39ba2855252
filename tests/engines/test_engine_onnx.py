"""onnx engine: an sklearn model converted with skl2onnx, and a hand-built two-input graph."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError


@pytest.fixture(scope="module")
def iris_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(model, x[:1].astype(np.float32), options={"zipmap": False})
    path = tmp_path_factory.mktemp("onnx") / "iris.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, model, x


def test_skl2onnx_iris(iris_onnx: Any, make_config: Any, collect: Any) -> None:
    path, model, x = iris_onnx
    engine = default_engine_registry().create(make_config("onnx", "iris.onnx"), path)
    engine.load()
    # a plain list (JSON floats) for a single-input model
    out = asyncio.run(engine.predict(x[:6].tolist(), {}, collect))
    assert set(out) == {"label", "probabilities"}
    np.testing.assert_array_equal(out["label"], model.predict(x[:6]))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:6]), atol=1e-5)
    # a dict by input name
    out2 = engine.predict_sync({"X": x[:2]}, {}, collect)
    np.testing.assert_array_equal(out2["label"], model.predict(x[:2]))
    meta = engine.metadata()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {"name": "label", "datatype": "INT64", "shape": [-1]} in meta["outputs"]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    with pytest.raises(InvalidInput, match="onnx model rejected the input"):
        engine.predict_sync([[1.0, 2.0]], {}, collect)
    with pytest.raises(InvalidInput, match="onnx model has no input 'nope'"):
        engine.predict_sync({"nope": x[:1], "X": x[:1]}, {}, collect)
    engine.unload()


def test_declared_outputs_subset(iris_onnx: Any, make_config: Any, collect: Any) -> None:
    from modelyard.config import TensorSpec

    path, model, x = iris_onnx
    cfg = make_config("onnx", "iris.onnx", outputs=[TensorSpec(name="label")])
    engine = default_engine_registry().create(cfg, path)
    engine.load()
    out = engine.predict_sync(x[:3], {}, collect)
    assert list(out) == ["label"]
    np.testing.assert_array_equal(out["label"], model.predict(x[:3]))


def _two_input_model(path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 3])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [None, 3])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 3])
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "bf"], ["sum"]),
    ]
    graph = helper.make_graph(nodes, "add", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def test_two_inputs_need_a_dict(tmp_path: Path, make_config: Any, collect: Any) -> None:
    path = tmp_path / "add.onnx"
    _two_input_model(path)
    engine = default_engine_registry().create(make_config("onnx", "add.onnx"), path)
    engine.load()
    out = engine.predict_sync({"a": [[1.5, 2.0, 3.0]], "b": [[1, 2, 3]]}, {}, collect)
    np.testing.assert_allclose(out["sum"], [[2.5, 4.0, 6.0]])
    assert out["sum"].dtype == np.float32
    with pytest.raises(InvalidInput, match="has 2 inputs; send a dict of a, b"):
        engine.predict_sync([[1.0, 2.0, 3.0]], {}, collect)
    with pytest.raises(InvalidInput, match="input 'b' is missing"):
        engine.predict_sync({"a": [[1.0, 2.0, 3.0]]}, {}, collect)


def test_cuda_request_falls_back_to_cpu(iris_onnx: Any, make_config: Any, collect: Any) -> None:
    import onnxruntime as ort

    path, model, x = iris_onnx
    engine = default_engine_registry().create(
        make_config("onnx", "iris.onnx", options={"device": "cuda", "threads": 1}), path
    )
    engine.load()
    providers = engine.model.get_providers()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers[0] == "CUDAExecutionProvider"
    else:
        assert providers == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(engine.predict_sync(x[:2], {}, collect)["label"], model.predict(x[:2]))


@pytest.mark.parametrize("content", [b"not an onnx model", b""])
def test_corrupt_onnx(tmp_path: Path, make_config: Any, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    engine = default_engine_registry().create(make_config("onnx", "model.onnx"), path)
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    assert str(info.value).startswith("cannot load onnx model from 'model.onnx': ")


def test_wrong_framework_file(tmp_path: Path, make_config: Any) -> None:
    import joblib

    path = tmp_path / "model.onnx"
    joblib.dump(LogisticRegression(), path)
    engine = default_engine_registry().create(make_config("onnx", "model.onnx"), path)
    with pytest.raises(ModelLoadError, match=r"cannot load onnx model from 'model\.onnx'"):
        engine.load()
