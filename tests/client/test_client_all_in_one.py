"""The whole user path through the SDK and the CLI against an all-in-one server (both planes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelyard import errors
from modelyard.client import Client
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, train_sklearn


@pytest.fixture
def all_in_one(settings: Settings) -> Iterator[tuple[str, Settings]]:
    from modelyard.server import create_all_in_one_app

    settings = settings.model_copy(update={"sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        yield url, settings


def _infer_when_ready(client: Client, endpoint: str, version: str, data: object) -> object:
    deadline = time.monotonic() + 10
    while True:
        try:
            return client.infer(endpoint, version=version, data=data)
        except (errors.NotFound, errors.Unavailable):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_upload_add_infer_via_cli_and_sdk(all_in_one: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = all_in_one
    model = train_sklearn(tmp_path / "model.pkl")
    code = tmp_path / "preprocess.py"
    code.write_text(PREPROCESS_XY.replace("TAG", "cli"))
    run_cli = CliHarness(cli_env(url, settings.resolved_home()))

    upload = run_cli(
        "model",
        "upload",
        "--name",
        "iris",
        "--project",
        "demo",
        "--framework",
        "sklearn",
        "--path",
        str(tmp_path / "model.pkl"),
        "--publish",
    )
    model_id = upload.stdout.strip().splitlines()[-1]
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--engine",
        "sklearn",
        "--name",
        "iris",
        "--project",
        "demo",
        "--published",
        "--preprocess",
        str(code),
    )

    with Client(url, settings=settings) as client:
        assert client.get_endpoint("default", "iris/1")["model_id"] == model_id
        answer = _infer_when_ready(client, "iris", "1", {"x0": 1, "x1": 2})
        expected = model.predict(np.array([[1, 2]])).tolist()
        assert answer == {"y": expected, "code": "cli"}
        assert client.infer("iris", version="1", data={"x0": 1, "x1": 2}, gzip=True) == answer

        deadline = time.monotonic() + 10
        while "ready" not in run_cli("endpoint", "list").stdout:
            assert time.monotonic() < deadline, run_cli("endpoint", "list").stdout
            time.sleep(0.1)

        with pytest.raises(errors.NotFound, match="nope"):
            client.infer("nope", data={})
