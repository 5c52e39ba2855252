"""A custom engine: the user's code loads the model file and runs it (clearml-serving's custom example)."""

from typing import Any

import joblib
import numpy as np


class Preprocess:
    def __init__(self):
        self._model = None

    def load(self, local_file_name: str) -> Any:
        # called once per loaded endpoint version with the model file's local path
        self._model = joblib.load(local_file_name)
        return self._model

    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        features = body.get("features")
        if not isinstance(features, list) or not features:
            raise ValueError('body must be {"features": [[x0, x1, x2, x3], ...]}')
        return np.asarray(features, dtype=float)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return self._model.predict_proba(data)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return {
            "classes": np.argmax(data, axis=1).tolist(),
            "probabilities": np.round(data, 4).tolist(),
        }
