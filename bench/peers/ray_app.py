"""Ray Serve: one deployment per model, requests batched with ``@serve.batch``, access log off.

    MODELS_DIR=... python ray_app.py PORT REPLICAS
Request: ``POST /iris {"x": [...]}`` -> ``{"y": [label]}``. Ray runs its own local cluster here
(2 CPUs, no dashboard); replicas ask for no CPU so 2 replicas per model fit on 2 cores. Each
replica merges concurrent requests into one ``predict`` of up to 64 rows, waiting at most 2 ms
(``max_ongoing_requests`` 128, so up to 64 can be waiting on a replica at once).
"""

import os
import signal
import sys

import joblib
import numpy as np
import ray
from ray import serve
from ray.serve.schema import LoggingConfig
from starlette.requests import Request

port, replicas = int(sys.argv[1]), int(sys.argv[2])
QUIET = LoggingConfig(enable_access_log=False, log_level="WARNING")


# max_ongoing_requests (default 5) must reach the batch size, or a batch never holds more than 5
@serve.deployment(
    num_replicas=replicas,
    ray_actor_options={"num_cpus": 0},
    logging_config=QUIET,
    max_ongoing_requests=128,
)
class Model:
    def __init__(self, path: str) -> None:
        self.model = joblib.load(path)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict(self, rows: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(rows)).tolist()

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        return {"y": [await self.predict(body["x"])]}


ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
for name in ("iris", "rf"):
    serve.run(Model.bind(f"{os.environ['MODELS_DIR']}/{name}.joblib"), name=name, route_prefix=f"/{name}")
print("ray serve ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
serve.shutdown()
ray.shutdown()
