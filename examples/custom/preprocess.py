"""A custom engine: the user's code loads the model file and runs it (clearml-serving's custom example).

``body`` is ``{"features": [[x0, x1, x2, x3], ...]}`` over ``/serve``, the one input
``features`` as a numpy array over ``/v2`` (Open Inference Protocol), and the request body
``{"instances": [[x0, x1, x2, x3], ...]}`` over ``/v1`` (KServe V1).
"""

from typing import Any

import joblib
import numpy as np


def feature_rows(body: Any) -> np.ndarray:
    """The request's rows of 4 features, one per prediction."""
    if isinstance(body, dict):  # /serve's {"features": ...} or KServe V1's {"instances": ...}
        body = body.get("features", body.get("instances"))
        if not isinstance(body, list) or not body:
            raise ValueError('body must be {"features": [[x0, x1, x2, x3], ...]}')
    return np.asarray(body, dtype=float).reshape(-1, 4)


class Preprocess:
    def __init__(self):
        self._model = None

    def load(self, local_file_name: str) -> Any:
        # called once per loaded endpoint version with the model file's local path
        self._model = joblib.load(local_file_name)
        return self._model

    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_rows(body)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return self._model.predict_proba(data)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return {
            "classes": np.argmax(data, axis=1).tolist(),
            "probabilities": np.round(data, 4).tolist(),
        }
