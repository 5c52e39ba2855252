"""MLServer: writes the model repository ``mlserver start`` reads (settings.json + one model-settings.json
per model, served by mlserver-sklearn's stock ``SKLearnModel``). ``workers`` None keeps MLServer's
default ``parallel_workers``. ``debug: false`` turns uvicorn's access log off (MLServer ties it to
``debug``, which defaults to true). ``batching`` (``(max_batch_size, max_batch_time_s)``) turns on
MLServer's adaptive batching for the models named in ``batched`` (RF by default).

    python mlserver_settings.py FOLDER MODELS_DIR HTTP GRPC METRICS [WORKERS]
Request (V2): ``POST /v2/models/iris/infer {"inputs": [{"name": "x", "shape": [1, 4], "datatype":
"FP64", "data": [...]}]}``.
"""

import json
import sys
from pathlib import Path

BATCHING = (64, 0.002)
"""MLServer's adaptive batching on RF: at most 64 requests, waiting at most 2 ms (modelyard's)."""


def write(
    folder: Path,
    models_dir: str,
    http: int,
    grpc: int,
    metrics: int,
    workers: int | None,
    batching: tuple[int, float] | None = BATCHING,
    batched: tuple[str, ...] = ("rf",),
) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "debug": False,
    }
    if workers is not None:
        settings["parallel_workers"] = workers
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings))
    for name in ("iris", "rf"):
        (folder / name).mkdir(exist_ok=True)
        model = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": f"{models_dir}/{name}.joblib"},
        }
        if batching and name in batched:
            model["max_batch_size"], model["max_batch_time"] = batching
        (folder / name / "model-settings.json").write_text(json.dumps(model))


if __name__ == "__main__":
    a = sys.argv[1:]
    write(Path(a[0]), a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]) if len(a) > 5 else None)
