"""A patient's ten measurements by name in; the predicted disease progression out, for the TensorFlow example.

``body`` is ``{"age": 54, "sex": 2, "bmi": 36.1, ...}`` (lists of values: several patients) over
``/serve``, the inputs ``age``..``s6`` as numpy arrays over ``/v2`` (Open Inference Protocol), and
the request body ``{"instances": [{"age": 54, ...}]}`` or ``{"instances": [[54, 2, 36.1, ...]]}``
over ``/v1`` (KServe V1): ``feature_rows`` turns each into the rows the SavedModel takes.
"""

from typing import Any

import numpy as np

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def feature_rows(body: Any) -> np.ndarray:
    """The request's rows of measurements, one per patient, as the model takes them."""
    if isinstance(body, dict) and "instances" in body:  # KServe V1
        body = body["instances"]
        if body and isinstance(body[0], dict):
            body = {name: [row[name] for row in body] for name in FEATURES}
    if isinstance(body, dict):  # by name: /serve's JSON, or the OIP inputs
        missing = [name for name in FEATURES if name not in body]
        if missing:
            raise ValueError(
                f"missing measurement(s) {', '.join(missing)}; send all of {', '.join(FEATURES)}"
            )
        return np.column_stack([np.asarray(body[name], dtype=np.float32).reshape(-1) for name in FEATURES])
    return np.asarray(body, dtype=np.float32).reshape(-1, len(FEATURES))  # rows [[age, ..., s6], ...]


class Preprocess:
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_rows(body)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # data: the serving signature's outputs by name, {"output_0": (N, 1) float32}
        (predicted,) = data.values()
        return {"progression": np.asarray(predicted, dtype=np.float64)[:, 0].round(1).tolist()}
