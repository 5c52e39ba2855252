"""NVIDIA Triton through PyTriton: the real tritonserver (from the wheel) in front of a Python callable.

    MODELS_DIR=... python pytriton_server.py HTTP_PORT GRPC_PORT METRICS_PORT WORKSPACE on|off
Request (KServe v2): ``POST /v2/models/iris/infer {"inputs": [{"name": "x", "shape": [1, 4],
"datatype": "FP64", "data": [...]}]}``. With batching on, Triton's dynamic batcher (max 64 rows, no
added delay: it batches what queued while the model ran) hands the callable several requests at once.
"""

import sys

import joblib
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

http_port, grpc_port, metrics_port = (int(p) for p in sys.argv[1:4])
workspace, batching = sys.argv[4], sys.argv[5] == "on"
DIR = __import__("os").environ["MODELS_DIR"]


def make_infer(model):
    if batching:

        @batch
        def infer(x):
            return {"y": model.predict(x).reshape(-1, 1).astype(np.int64)}

        return infer

    def infer_one(requests):
        return [{"y": model.predict(r["x"]).astype(np.int64)} for r in requests]

    return infer_one


config = TritonConfig(
    http_address="127.0.0.1",
    http_port=http_port,
    grpc_address="127.0.0.1",
    grpc_port=grpc_port,
    metrics_address="127.0.0.1",
    metrics_port=metrics_port,
)
with Triton(config=config, workspace=workspace) as triton:
    for name in ("iris", "rf"):
        model = joblib.load(f"{DIR}/{name}.joblib")
        if batching:
            triton.bind(
                model_name=name,
                infer_func=make_infer(model),
                inputs=[Tensor(name="x", dtype=np.float64, shape=(-1,))],
                outputs=[Tensor(name="y", dtype=np.int64, shape=(1,))],
                config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            )
        else:
            triton.bind(
                model_name=name,
                infer_func=make_infer(model),
                inputs=[Tensor(name="x", dtype=np.float64, shape=(-1, -1))],
                outputs=[Tensor(name="y", dtype=np.int64, shape=(-1,))],
                config=ModelConfig(batching=False),
            )
    print("pytriton ready", flush=True)
    triton.serve()
