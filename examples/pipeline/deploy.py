"""Serve ``test_pipeline`` (threaded) and ``test_pipeline_async`` over the sklearn and LightGBM examples.

Needs the ``sklearn`` and ``lightgbm`` examples deployed first. The same prediction over ``/serve``
(``SAMPLE``), the Open Inference Protocol (``/v2``: the declared inputs ``x0``..``x3``) and
KServe V1 (``/v1``: ``V1_SAMPLE``).
"""

from pathlib import Path

HERE = Path(__file__).parent
ENDPOINTS = ["test_pipeline/1", "test_pipeline_async/1"]
SAMPLE = {"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}
V1_SAMPLE = {"instances": [{"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}]}
NEEDS = ("sklearn", "lightgbm")
INPUTS = [{"name": name, "dtype": "float64", "shape": [-1]} for name in ("x0", "x1", "x2", "x3")]
OUTPUTS = [{"name": name, "dtype": "int64", "shape": [-1]} for name in ("sklearn", "lightgbm")]


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    for endpoint, engine, code in (
        ("test_pipeline", "custom", "preprocess.py"),
        ("test_pipeline_async", "custom_async", "async_preprocess.py"),
    ):
        client.add_endpoint(
            service,
            endpoint=endpoint,
            version="1",
            engine=engine,
            preprocess=HERE / code,
            inputs=INPUTS,
            outputs=OUTPUTS,
        )
    return [("test_pipeline/1", SAMPLE), ("test_pipeline_async/1", SAMPLE)]
