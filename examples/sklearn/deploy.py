"""Register the sklearn example model and serve it as ``test_model_sklearn``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared inputs ``x0``, ``x1``) and KServe V1 (``/v1``: ``V1_SAMPLE``).
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_sklearn/1"]
SAMPLE = {"x0": 1, "x1": 2}
V1_SAMPLE = {"instances": [{"x0": 1, "x1": 2}]}
INPUTS = [{"name": name, "dtype": "float64", "shape": [-1]} for name in ("x0", "x1")]
OUTPUTS = [{"name": "y", "dtype": "int64", "shape": [-1]}]


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
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_sklearn/1", SAMPLE)]
