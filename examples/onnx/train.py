"""Train the ONNX example: a logistic regression on scikit-learn's wine data, written as an ONNX graph.

scikit-learn fits the model (standardised features, multinomial logistic regression: 3 grape
cultivars from 13 chemical measurements; a third is held out). Its numbers then become the graph
``features -> Sub(mean) -> Div(scale) -> Gemm(coef, intercept) -> Softmax -> probabilities`` and
``ArgMax -> cultivar``, serialised here by a few lines of protobuf encoding, so that the example
needs onnxruntime alone (what ``modelyard[onnx]`` installs). Your own models come from an
exporter instead: ``torch.onnx.export``, ``skl2onnx``, ``tf2onnx``; the ``onnx`` engine serves any.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

FLOAT, INT64 = 1, 7  # ONNX TensorProto.DataType
OPSET = 13


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out rows of the 13 measurements, and their cultivars (0, 1, 2)."""
    x, y = load_wine(return_X_y=True)
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


# Protocol Buffers wire format: each field is its number and wire type (0: varint, 2: bytes), then the
# value; a message is its fields one after another. The field numbers are those of onnx/onnx.proto.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _message(*fields: tuple[int, int | str | bytes]) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _tensor(name: str, values: np.ndarray) -> bytes:  # TensorProto: dims, data_type, name, raw_data
    values = np.asarray(values, dtype="<f4")
    return _message(*[(1, d) for d in values.shape], (2, FLOAT), (8, name), (9, values.tobytes()))


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto: a graph input/output, its element type and shape (a name: any size)."""
    shape = _message(*[(1, _message((2, d) if isinstance(d, str) else (1, d))) for d in dims])
    return _message((1, name), (2, _message((1, _message((1, elem_type), (2, shape))))))


def _node(op: str, inputs: list[str], output: str, **attributes: int) -> bytes:
    """NodeProto: inputs, output, name, op_type, integer attributes (AttributeProto type 2: INT)."""
    attrs = [(5, _message((1, key), (3, value), (20, 2))) for key, value in attributes.items()]
    return _message(*[(1, i) for i in inputs], (2, output), (3, output), (4, op), *attrs)


def train(out_dir: Path) -> Path:
    x, _, y, _ = split()
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
    graph = _message(
        (1, _node("Sub", ["features", "mean"], "centred")),
        (1, _node("Div", ["centred", "scale"], "standardised")),
        (1, _node("Gemm", ["standardised", "coef", "intercept"], "logits", transB=1)),
        (1, _node("Softmax", ["logits"], "probabilities", axis=1)),
        (1, _node("ArgMax", ["probabilities"], "cultivar", axis=1, keepdims=0)),
        (2, "wine"),
        (5, _tensor("mean", scaler.mean_)),
        (5, _tensor("scale", scaler.scale_)),
        (5, _tensor("coef", classifier.coef_)),
        (5, _tensor("intercept", classifier.intercept_)),
        (11, _value_info("features", FLOAT, ["batch", x.shape[1]])),
        (12, _value_info("cultivar", INT64, ["batch"])),
        (12, _value_info("probabilities", FLOAT, ["batch", len(classifier.classes_)])),
    )
    # ModelProto: ir_version 8, producer_name, graph, opset_import (the default domain)
    model = _message((1, 8), (2, "modelyard examples/onnx"), (7, graph), (8, _message((1, ""), (2, OPSET))))
    path = Path(out_dir) / "wine.onnx"
    path.write_bytes(model)
    return path


if __name__ == "__main__":
    import onnxruntime

    path = train(Path("."))
    _, x, _, y = split()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (cultivar,) = session.run(["cultivar"], {"features": x.astype(np.float32)})
    print(f"{path} (held-out accuracy {(cultivar == y).mean():.1%})")
