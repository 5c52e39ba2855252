"""Register the sklearn example model and serve it as ``test_model_sklearn``."""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_sklearn/1"]
SAMPLE = {"x0": 1, "x1": 2}


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    model_path = train(workdir)
    model = client.upload_model(
        model_path,
        name="train sklearn model",
        project="serving examples",
        framework="sklearn",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_sklearn",
        version="1",
        engine="sklearn",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
        inputs=[{"name": "x0", "dtype": "float32"}, {"name": "x1", "dtype": "float32"}],
        outputs=[{"name": "y", "dtype": "int64"}],
    )
    return [("test_model_sklearn/1", SAMPLE)]
