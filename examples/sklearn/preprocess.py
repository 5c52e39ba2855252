"""Pre/post-processing for the sklearn example (clearml-serving's Preprocess contract).

The same prediction over every protocol; only the shape of ``body`` differs:

- ``/serve``: the JSON body, ``{"x0": 1, "x1": 2}`` (lists of values: several rows);
- ``/v2`` (Open Inference Protocol, tritonclient): the inputs ``x0`` and ``x1`` as a dict of
  numpy arrays (a request with ONE input, rows ``[[x0, x1], ...]``, gives that array alone);
- ``/v1`` (KServe V1): the request body, ``{"instances": [{"x0": 1, "x1": 2}]}`` or
  ``{"instances": [[1, 2]]}``.
"""

from typing import Any

import numpy as np

FEATURES = ("x0", "x1")


def feature_rows(body: Any) -> np.ndarray:
    """The request's rows of features, one per prediction, as the model takes them."""
    if isinstance(body, dict) and "instances" in body:  # KServe V1
        body = body["instances"]
        if body and isinstance(body[0], dict):
            body = {name: [row[name] for row in body] for name in FEATURES}
    if isinstance(body, dict):  # by name: /serve's JSON, or the OIP inputs
        return np.column_stack([np.asarray(body[name], dtype=float).reshape(-1) for name in FEATURES])
    return np.asarray(body, dtype=float).reshape(-1, len(FEATURES))  # rows [[x0, x1], ...]


class Preprocess:
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return feature_rows(body)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # data is the numpy array model.predict returned: one class per row
        return {"y": data.tolist()}
