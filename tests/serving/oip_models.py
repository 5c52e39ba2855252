"""Small real models for the OIP and batching tests (ONNX graphs built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
B = np.array([0.5, -1.0, 0.25], dtype=np.float32)


def mlp_onnx(path: Path) -> Path:
    """``X`` FP32 [-1, 4] → ``Y`` = relu(X @ W + B) FP32 [-1, 3] and ``label`` = argmax INT64 [-1]."""
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("Add", ["XW", "B"], ["Z"]),
        helper.make_node("Relu", ["Z"], ["Y"]),
        helper.make_node("ArgMax", ["Y"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def mlp_expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.maximum(x.astype(np.float32) @ W + B, 0)
    return y, y.argmax(axis=1)


ECHO = """
import numpy as np

class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        if isinstance(data, dict):
            return dict(data)
        return data
"""
"""custom engine: answers its inputs (every datatype round-trips)."""
