"""A pipeline endpoint (threaded): fan one request out to two other endpoints and merge the answers.

``self.send_request`` is injected by modelyard: it calls another endpoint of the same service in-process
and returns what that endpoint would answer over HTTP.

``preprocess`` turns any request into columns of features by name, ``{"x0": [...], ...}``, which
both endpoints called take: ``body`` is ``{"x0": 6.7, ...}`` over ``/serve``, the inputs
``x0``..``x3`` as numpy arrays over ``/v2`` (Open Inference Protocol), and the request body
``{"instances": [...]}`` over ``/v1`` (KServe V1).
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

FEATURES = ("x0", "x1", "x2", "x3")


def feature_columns(body: Any) -> dict:
    """``{"x0": [...], ..., "x3": [...]}``: one value per prediction under each feature name."""
    if isinstance(body, dict) and "instances" in body:  # KServe V1: rows by name or by position
        rows = body["instances"]
        if rows and not isinstance(rows[0], dict):
            rows = [dict(zip(FEATURES, row, strict=True)) for row in rows]
        body = {name: [row[name] for row in rows] for name in FEATURES}
    return {name: np.asarray(body[name], dtype=float).reshape(-1).tolist() for name in FEATURES}


class Preprocess:
    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=2)

    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_columns(body)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        sklearn = self._pool.submit(
            self.send_request,
            endpoint="test_model_sklearn",
            version="1",
            data={"x0": data["x0"], "x1": data["x1"]},
        )
        lgbm = self._pool.submit(self.send_request, endpoint="test_model_lgbm", version="1", data=data)
        return {"sklearn": sklearn.result()["y"], "lightgbm": lgbm.result()["y"]}

    def unload(self) -> None:
        self._pool.shutdown(wait=False)
