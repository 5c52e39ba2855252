"""BentoML: the minimal service, one API per model, as its docs write it (sync APIs, default config).

    MODELS_DIR=... BENCH_WORKERS=2 bentoml serve bentoml_service:Bench --host 127.0.0.1 --port P
Request: ``POST /iris {"x": [...]}`` -> ``[label]``.
"""

import os

import bentoml
import joblib
import numpy as np

DIR = os.environ["MODELS_DIR"]


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class Bench:
    def __init__(self) -> None:
        self.iris_model = joblib.load(f"{DIR}/iris.joblib")
        self.rf_model = joblib.load(f"{DIR}/rf.joblib")

    @bentoml.api
    def iris(self, x: list[float]) -> list[int]:
        return self.iris_model.predict(np.asarray([x])).tolist()

    @bentoml.api
    def rf(self, x: list[float]) -> list[int]:
        return self.rf_model.predict(np.asarray([x])).tolist()
