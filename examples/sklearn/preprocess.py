"""Pre/post-processing for the sklearn example (clearml-serving's Preprocess contract)."""

from typing import Any


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        # the request is {"x0": 1, "x1": 2}; the model takes a batch of rows
        return [[body.get("x0"), body.get("x1")]]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # data is the numpy array model.predict returned
        return {"y": data.tolist() if hasattr(data, "tolist") else data}
