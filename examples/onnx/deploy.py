"""Register the ONNX example model and serve it as ``test_model_onnx``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared input ``features``) and KServe V1 (``/v1``: ``V1_SAMPLE``). Deployed only where
``onnxruntime`` is installed (``REQUIRES``; ``pip install 'modelyard[onnx]'``, part of ``[all]``).
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
REQUIRES = ("onnxruntime",)
ENDPOINTS = ["test_model_onnx/1"]
ROWS = [  # two held-out wines: cultivars 0 and 1
    [13.77, 1.9, 2.68, 17.1, 115.0, 3.0, 2.79, 0.39, 1.68, 6.3, 1.13, 2.93, 1375.0],
    [12.17, 1.45, 2.53, 19.0, 104.0, 1.89, 1.75, 0.45, 1.03, 2.95, 1.45, 2.23, 355.0],
]
SAMPLE = {"features": ROWS}
V1_SAMPLE = {"instances": ROWS}
INPUTS = [{"name": "features", "dtype": "float32", "shape": [-1, 13]}]
OUTPUTS = [
    {"name": "cultivar", "dtype": "int64", "shape": [-1]},
    {"name": "probabilities", "dtype": "float64", "shape": [-1, 3]},
]


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    train = runpy.run_path(str(HERE / "train.py"))["train"]
    model = client.upload_model(
        train(workdir),
        name="train onnx model",
        project="serving examples",
        framework="onnx",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_onnx",
        version="1",
        engine="onnx",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_onnx/1", SAMPLE)]
