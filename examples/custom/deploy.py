"""Register the custom example and serve it as ``test_model_custom``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared input ``features``) and KServe V1 (``/v1``: ``V1_SAMPLE``).
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_custom/1"]
SAMPLE = {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
V1_SAMPLE = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
INPUTS = [{"name": "features", "dtype": "float64", "shape": [-1, 4]}]
OUTPUTS = [
    {"name": "classes", "dtype": "int64", "shape": [-1]},
    {"name": "probabilities", "dtype": "float64", "shape": [-1, 3]},
]


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
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_custom/1", SAMPLE)]
