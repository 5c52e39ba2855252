"""One endpoint combining two models: average their class probabilities (soft voting).

``body`` is ``{"features": [[x0, x1, x2, x3], ...]}`` over ``/serve``, the one input
``features`` as a numpy array over ``/v2`` (Open Inference Protocol), and the request body
``{"instances": [[x0, x1, x2, x3], ...]}`` over ``/v1`` (KServe V1).
"""

from typing import Any

import joblib
import numpy as np


class Preprocess:
    def load(self, local_file_name: str) -> Any:
        self._models = joblib.load(local_file_name)
        return self._models

    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        if isinstance(body, dict):  # /serve's {"features": ...} or KServe V1's {"instances": ...}
            body = body["features"] if "features" in body else body["instances"]
        return np.asarray(body, dtype=float).reshape(-1, 4)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        votes = [model.predict_proba(data) for model in self._models.values()]
        return np.mean(votes, axis=0)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return {
            "classes": data.argmax(axis=1).tolist(),
            "probabilities": np.round(data, 4).tolist(),
        }
