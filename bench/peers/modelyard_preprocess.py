"""modelyard's side of the benchmark: ``{"x": [...]}`` (one row) -> a one-row batch -> ``{"y": [...]}``.

The same request and answer shape as the baseline, so the difference between the two is modelyard's
data plane (routing, hooks, error checks, metrics), not the payload.
"""


class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [body["x"]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist()}
