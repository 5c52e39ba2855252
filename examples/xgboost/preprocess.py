"""Iris features by name in, class index out, for the XGBoost example."""

from typing import Any

FEATURES = ("x0", "x1", "x2", "x3")


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return [[float(body[name]) for name in FEATURES]]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return {"y": [int(v) for v in data]}
