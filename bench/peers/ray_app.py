"""Ray Serve: one deployment per model (a replica holds the model; ``__call__`` takes the request).

    MODELS_DIR=... python ray_app.py PORT REPLICAS
Request: ``POST /iris {"x": [...]}`` -> ``{"y": [label]}``. Ray runs its own local cluster here
(2 CPUs, no dashboard); replicas ask for no CPU so 2 replicas per model fit on 2 cores.
"""

import os
import signal
import sys

import joblib
import numpy as np
import ray
from ray import serve
from starlette.requests import Request

port, replicas = int(sys.argv[1]), int(sys.argv[2])


@serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 0})
class Model:
    def __init__(self, path: str) -> None:
        self.model = joblib.load(path)

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        return {"y": self.model.predict(np.asarray([body["x"]])).tolist()}


ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
serve.start(http_options={"host": "127.0.0.1", "port": port})
for name in ("iris", "rf"):
    serve.run(Model.bind(f"{os.environ['MODELS_DIR']}/{name}.joblib"), name=name, route_prefix=f"/{name}")
print("ray serve ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
serve.shutdown()
ray.shutdown()
