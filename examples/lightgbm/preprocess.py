"""Iris features by name in; class probabilities and the winning class out, for the LightGBM example.

``body`` is ``{"x0": 6.7, ...}`` over ``/serve``, the inputs ``x0``..``x3`` as numpy arrays over
``/v2`` (Open Inference Protocol), and the request body ``{"instances": [...]}`` over ``/v1``
(KServe V1): ``feature_rows`` turns each into the rows the model takes.
"""

from typing import Any

import numpy as np

FEATURES = ("x0", "x1", "x2", "x3")


def feature_rows(body: Any) -> np.ndarray:
    """The request's rows of features, one per prediction, as the model takes them."""
    if isinstance(body, dict) and "instances" in body:  # KServe V1
        body = body["instances"]
        if body and isinstance(body[0], dict):
            body = {name: [row[name] for row in body] for name in FEATURES}
    if isinstance(body, dict):  # by name: /serve's JSON, or the OIP inputs
        return np.column_stack([np.asarray(body[name], dtype=float).reshape(-1) for name in FEATURES])
    return np.asarray(body, dtype=float).reshape(-1, len(FEATURES))  # rows [[x0, ..., x3], ...]


class Preprocess:
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_rows(body)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        probabilities = np.asarray(data)
        return {"y": probabilities.argmax(axis=1).tolist(), "probabilities": probabilities.tolist()}
