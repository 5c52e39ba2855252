"""Register the LightGBM example model and serve it as ``test_model_lgbm``."""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_lgbm/1"]
SAMPLE = {"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    model = client.upload_model(
        train(workdir),
        name="train lightgbm model",
        project="serving examples",
        framework="lightgbm",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_lgbm",
        version="1",
        engine="lightgbm",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
    )
    return [("test_model_lgbm/1", SAMPLE)]
