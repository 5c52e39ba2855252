"""Register the LightGBM example model and serve it as ``test_model_lgbm``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared inputs ``x0``..``x3``) and KServe V1 (``/v1``: ``V1_SAMPLE``).
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
train = runpy.run_path(str(HERE / "train.py"))["train"]
ENDPOINTS = ["test_model_lgbm/1"]
SAMPLE = {"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}
V1_SAMPLE = {"instances": [{"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}]}
INPUTS = [{"name": name, "dtype": "float64", "shape": [-1]} for name in ("x0", "x1", "x2", "x3")]
OUTPUTS = [
    {"name": "y", "dtype": "int64", "shape": [-1]},
    {"name": "probabilities", "dtype": "float64", "shape": [-1, 3]},
]


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
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_lgbm/1", SAMPLE)]
