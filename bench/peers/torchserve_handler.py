"""TorchServe: a module-level handler that loads the joblib file TorchServe unpacked from the .mar.

TorchServe calls ``handle(None, context)`` once to initialise, then ``handle(batch, context)`` with
a list of requests (one unless the model is registered with a batch size). Request:
``POST /predictions/iris {"x": [...]}`` -> ``{"y": [label]}``.
"""

import json
import os

import joblib
import numpy as np

_model = None


def handle(data, context):
    global _model
    if _model is None:
        props = context.system_properties
        _model = joblib.load(os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"]))
    if data is None:
        return None
    rows = []
    for item in data:
        body = item.get("body") if item.get("body") is not None else item.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        rows.append(body["x"])
    return [{"y": [int(v)]} for v in _model.predict(np.asarray(rows))]
