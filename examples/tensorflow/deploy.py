"""Register the TensorFlow example (a Keras network, exported as a SavedModel) as ``test_model_keras``.

The same prediction over ``/serve`` (``SAMPLE``), the Open Inference Protocol (``/v2``: the
declared inputs ``age``..``s6``) and KServe V1 (``/v1``: ``V1_SAMPLE``). Deployed only where
``tensorflow`` is installed (``REQUIRES``; ``pip install 'modelyard[tensorflow]'``): this file
does not import it.
"""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
REQUIRES = ("tensorflow",)
ENDPOINTS = ["test_model_keras/1"]
SAMPLE = {  # a held-out patient (progression measured a year later: 321)
    "age": 54, "sex": 2, "bmi": 36.1, "bp": 115, "s1": 163,
    "s2": 98.4, "s3": 43, "s4": 4, "s5": 4.6821, "s6": 101,
}  # fmt: skip
V1_SAMPLE = {"instances": [[54, 2, 36.1, 115, 163, 98.4, 43, 4, 4.6821, 101]]}
INPUTS = [{"name": name, "dtype": "float64", "shape": [-1]} for name in SAMPLE]
OUTPUTS = [{"name": "progression", "dtype": "float64", "shape": [-1]}]


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    train = runpy.run_path(str(HERE / "train.py"))["train"]
    model = client.upload_model(
        train(workdir),  # the SavedModel folder: uploaded as one folder artifact
        name="train keras model",
        project="serving examples",
        framework="tensorflow",
        publish=True,
    )
    client.add_endpoint(
        service,
        endpoint="test_model_keras",
        version="1",
        engine="tensorflow",
        model_id=model["id"],
        preprocess=HERE / "preprocess.py",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )
    return [("test_model_keras/1", SAMPLE)]
