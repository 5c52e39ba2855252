"""Register the XGBoost example model and serve it as ``test_model_xgb``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared inputs ``x0``..``x3``) and KServe V1 (``/v1``: ``V1_SAMPLE``).
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_xgb/1"]
SAMPLE = {"x0": 5.1, "x1": 3.5, "x2": 1.4, "x3": 0.2}
V1_SAMPLE = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
INPUTS = [{"name": name, "dtype": "float64", "shape": [-1]} for name in ("x0", "x1", "x2", "x3")]
OUTPUTS = [{"name": "y", "dtype": "int64", "shape": [-1]}]


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    model = client.upload_model(
        train(workdir),
        name="train xgboost model",
        project="serving examples",
        framework="xgboost",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_xgb",
        version="1",
        engine="xgboost",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_xgb/1", SAMPLE)]
