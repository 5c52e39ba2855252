"""Wine measurements in; the cultivar and its probabilities out, for the ONNX example.

``body`` is ``{"features": [[13 measurements], ...]}`` over ``/serve``, the one input ``features``
as a numpy array ``(N, 13)`` over ``/v2`` (Open Inference Protocol), and the request body
``{"instances": [[13 measurements], ...]}`` over ``/v1`` (KServe V1). The graph standardises the
measurements itself, so the code only shapes them; the ``onnx`` engine casts them to the float32
the graph declares and returns its outputs by name.
"""

from typing import Any

import numpy as np

MEASUREMENTS = 13  # alcohol, malic acid, ash, ..., proline: sklearn.datasets.load_wine().feature_names


def feature_rows(body: Any) -> np.ndarray:
    """The request's rows of 13 measurements, one per wine."""
    if isinstance(body, dict):  # /serve's {"features": ...} or KServe V1's {"instances": ...}
        body = body.get("features", body.get("instances"))
        if not isinstance(body, list) or not body:
            raise ValueError(f'body must be {{"features": [[{MEASUREMENTS} measurements], ...]}}')
    rows = np.asarray(body, dtype=np.float32)
    if rows.size % MEASUREMENTS:
        raise ValueError(f"each row has {MEASUREMENTS} measurements; got {rows.size} values")
    return rows.reshape(-1, MEASUREMENTS)


class Preprocess:
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_rows(body)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # data: the graph's declared outputs by name, {"cultivar": (N,), "probabilities": (N, 3)}
        probabilities = np.asarray(data["probabilities"], dtype=np.float64)
        return {"cultivar": data["cultivar"].tolist(), "probabilities": probabilities.round(4).tolist()}
