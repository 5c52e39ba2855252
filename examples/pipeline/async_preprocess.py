"""A pipeline endpoint (asyncio): the same fan-out as preprocess.py with ``async_send_request``.

``preprocess`` turns any request (``/serve``, ``/v2``, ``/v1``) into columns of features by
name, as in preprocess.py.
"""

import asyncio
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
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_columns(body)

    async def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        sklearn, lgbm = await asyncio.gather(
            self.async_send_request(
                "test_model_sklearn", version="1", data={"x0": data["x0"], "x1": data["x1"]}
            ),
            self.async_send_request("test_model_lgbm", version="1", data=data),
        )
        return {"sklearn": sklearn["y"], "lightgbm": lgbm["y"]}
