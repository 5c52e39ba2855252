"""Register the custom example and serve it as ``test_model_custom``."""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_custom/1"]
SAMPLE = {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    model = client.upload_model(
        train(workdir),
        name="custom model",
        project="serving examples",
        framework="custom",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_custom",
        version="1",
        engine="custom",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
    )
    return [("test_model_custom/1", SAMPLE)]
