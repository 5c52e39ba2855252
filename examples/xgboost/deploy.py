"""Register the XGBoost example model and serve it as ``test_model_xgb``."""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_xgb/1"]
SAMPLE = {"x0": 5.1, "x1": 3.5, "x2": 1.4, "x3": 0.2}


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
    )
    return [("test_model_xgb/1", SAMPLE)]
