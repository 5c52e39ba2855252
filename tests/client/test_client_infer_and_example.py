"""``Client.infer``: the body comes second, the version is keyword-only; ``examples/sdk.py`` runs.

Against a real all-in-one server (control plane and replica, uvicorn in a thread).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard import errors
from modelyard.client import Client
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, train_sklearn

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, Settings]]:
    settings = settings.model_copy(update={"sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        yield url, settings


def _when_served(client: Client, endpoint: str, body: Any) -> Any:
    deadline = time.monotonic() + 20
    while True:
        try:
            return client.infer(endpoint, body)
        except (errors.NotFound, errors.Unavailable):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_infer_takes_the_body_second_and_the_version_by_keyword(
    served: tuple[str, Settings], tmp_path: Path
) -> None:
    url, settings = served
    train_sklearn(tmp_path / "model.pkl")
    code = tmp_path / "p.py"
    with Client(url, settings=settings) as client:
        model = client.upload_model(tmp_path / "model.pkl", name="iris", project="demo", framework="sklearn")
        for version in ("1", "2"):
            code.write_text(PREPROCESS_XY.replace("TAG", f"v{version}"))
            client.add_endpoint(
                "default", "iris", version=version, engine="sklearn", model_id=model["id"], preprocess=code
            )
        body = {"x0": 1, "x1": 2}
        assert _when_served(client, "iris/1", body)["code"] == "v1"
        assert _when_served(client, "iris/2", body)["code"] == "v2"
        # what the issue found: the body given second was taken for the version
        assert client.infer("iris", body)["code"] == "v2"  # no version: the highest serving
        assert client.infer("iris", body, version="1")["code"] == "v1"
        assert client.infer("iris", data=body, version="1")["code"] == "v1"
        with pytest.raises(TypeError):
            client.infer("iris", "1", body)  # type: ignore[misc]
        with pytest.raises(errors.BadRequest, match="names its version already"):
            client.infer("iris/1", body, version="2")


def test_the_sdk_example_runs_against_a_server(served: tuple[str, Settings]) -> None:
    url, settings = served
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(MODELYARD_URL=url, MODELYARD_HOME=str(settings.resolved_home()))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sdk.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "answer: {'y': [1]}" in out
    assert "answer: {'y': [1, 0]}" in out
    assert "'sdk_iris/1': 'ready'" in out
    assert "probabilities: {'y': [[" in out
    assert "removed sdk_iris/1 and its model" in out
    with Client(url, settings=settings) as client:
        assert client.list_endpoints("default") == [] and client.list_models() == []
