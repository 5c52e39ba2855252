"""One endpoint combining two models: average their class probabilities (soft voting)."""

from typing import Any

import joblib
import numpy as np


class Preprocess:
    def load(self, local_file_name: str) -> Any:
        self._models = joblib.load(local_file_name)
        return self._models

    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return np.asarray(body["features"], dtype=float).reshape(-1, 4)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        votes = [model.predict_proba(data) for model in self._models.values()]
        return np.mean(votes, axis=0)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return {
            "classes": data.argmax(axis=1).tolist(),
            "probabilities": np.round(data, 4).tolist(),
        }
