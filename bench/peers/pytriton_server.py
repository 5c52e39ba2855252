"""NVIDIA Triton through PyTriton: the real tritonserver (from the wheel) in front of a Python callable.

    MODELS_DIR=... python pytriton_server.py HTTP_PORT GRPC_PORT METRICS_PORT WORKSPACE INSTANCES
Request (KServe v2): ``POST /v2/models/iris/infer {"inputs": [{"name": "x", "shape": [1, 4],
"datatype": "FP64", "data": [...]}]}``. Triton's dynamic batcher (max 64 rows, no added delay: it
batches what queued while the model ran) hands the callable several requests at once; with
INSTANCES=2 each model is bound with two callables (``infer_func=[f, f]``: two model instances,
so two batches can run at once). Triton logs nothing per request by default (``log_verbose=0``).
"""

import sys

import joblib
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

http_port, grpc_port, metrics_port = (int(p) for p in sys.argv[1:4])
workspace, instances = sys.argv[4], int(sys.argv[5])
DIR = __import__("os").environ["MODELS_DIR"]


def make_infer(model):
    @batch
    def infer(x):
        return {"y": model.predict(x).reshape(-1, 1).astype(np.int64)}

    return infer


config = TritonConfig(
    http_address="127.0.0.1",
    http_port=http_port,
    grpc_address="127.0.0.1",
    grpc_port=grpc_port,
    metrics_address="127.0.0.1",
    metrics_port=metrics_port,
    log_verbose=0,
)
with Triton(config=config, workspace=workspace) as triton:
    for name in ("iris", "rf"):
        model = joblib.load(f"{DIR}/{name}.joblib")
        triton.bind(
            model_name=name,
            infer_func=[make_infer(model) for _ in range(instances)],
            inputs=[Tensor(name="x", dtype=np.float64, shape=(-1,))],
            outputs=[Tensor(name="y", dtype=np.int64, shape=(1,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
        )
    print("pytriton ready", flush=True)
    triton.serve()
