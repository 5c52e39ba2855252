"""Register the PyTorch example model and serve it as ``test_model_pytorch``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared input ``image``) and KServe V1 (``/v1``: ``V1_SAMPLE``). Deployed only where ``torch``
is installed (``REQUIRES``; ``pip install 'modelyard[torch]'``): this file does not import it.
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
REQUIRES = ("torch",)
ENDPOINTS = ["test_model_pytorch/1"]
NINE = [  # a held-out image of a 9, pixel intensities 0..16
    [0, 0, 8, 16, 10, 2, 0, 0],
    [0, 0, 12, 13, 14, 11, 0, 0],
    [0, 0, 10, 13, 8, 16, 2, 0],
    [0, 0, 4, 15, 15, 16, 8, 0],
    [0, 0, 0, 3, 8, 11, 13, 0],
    [0, 0, 0, 0, 0, 5, 16, 4],
    [0, 0, 1, 2, 2, 7, 16, 5],
    [0, 0, 3, 14, 16, 16, 11, 1],
]
SAMPLE = {"image": [NINE]}
V1_SAMPLE = {"instances": [NINE]}
INPUTS = [{"name": "image", "dtype": "float32", "shape": [-1, 8, 8]}]
OUTPUTS = [
    {"name": "digit", "dtype": "int64", "shape": [-1]},
    {"name": "probabilities", "dtype": "float64", "shape": [-1, 10]},
]


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    train = runpy.run_path(str(HERE / "train.py"))["train"]  # imports torch
    model = client.upload_model(
        train(workdir),
        name="train pytorch model",
        project="serving examples",
        framework="pytorch",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_pytorch",
        version="1",
        engine="pytorch",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_pytorch/1", SAMPLE)]
