"""Iris features by name in; class probabilities and the winning class out, for the LightGBM example."""

from typing import Any

import numpy as np

FEATURES = ("x0", "x1", "x2", "x3")


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return np.array([[float(body[name]) for name in FEATURES]])

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        probabilities = np.asarray(data)
        return {"y": probabilities.argmax(axis=1).tolist(), "probabilities": probabilities.tolist()}
