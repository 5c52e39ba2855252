"""BentoML: one batchable API per model (BentoML's adaptive batching), access log off.

    MODELS_DIR=... BENCH_WORKERS=2 bentoml serve bentoml_service:Bench --host 127.0.0.1 --port P
Request: ``POST /iris {"x": [[...]]}`` (a batchable API takes a batch: here of one row) ->
``[label]``. BentoML merges concurrent requests into one call of up to 64 rows; it adapts how long
it waits from the latency it measures (``max_latency_ms`` is the most a request may wait in all).
"""

import os

import bentoml
import joblib
import numpy as np

DIR = os.environ["MODELS_DIR"]
BATCH = {"batchable": True, "max_batch_size": 64, "max_latency_ms": 10_000}


@bentoml.service(
    workers=int(os.environ.get("BENCH_WORKERS", "1")),
    logging={"access": {"enabled": False}},
)
class Bench:
    def __init__(self) -> None:
        self.iris_model = joblib.load(f"{DIR}/iris.joblib")
        self.rf_model = joblib.load(f"{DIR}/rf.joblib")

    @bentoml.api(**BATCH)
    def iris(self, x: np.ndarray) -> np.ndarray:
        return self.iris_model.predict(x)

    @bentoml.api(**BATCH)
    def rf(self, x: np.ndarray) -> np.ndarray:
        return self.rf_model.predict(x)
