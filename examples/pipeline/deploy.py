"""Serve ``test_pipeline`` (threaded) and ``test_pipeline_async`` over the sklearn and LightGBM examples.

Needs the ``sklearn`` and ``lightgbm`` examples deployed first.
"""

from pathlib import Path

HERE = Path(__file__).parent
ENDPOINTS = ["test_pipeline/1", "test_pipeline_async/1"]
SAMPLE = {"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}
NEEDS = ("sklearn", "lightgbm")


def deploy(client, service: str, workdir: Path) -> list[tuple[str, dict]]:
    client.add_endpoint(
        service,
        endpoint="test_pipeline",
        version="1",
        engine="custom",
        preprocess=HERE / "preprocess.py",
    )
    client.add_endpoint(
        service,
        endpoint="test_pipeline_async",
        version="1",
        engine="custom_async",
        preprocess=HERE / "async_preprocess.py",
    )
    return [("test_pipeline/1", SAMPLE), ("test_pipeline_async/1", SAMPLE)]
