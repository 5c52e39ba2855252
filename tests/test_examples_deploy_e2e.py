"""``serve --examples``: each example deploys on its own; a failing one never hides the others.

A private examples folder mixes the real sklearn and custom examples with ones that fail: a
missing package, a model that does not load, and a pipeline that needs the missing one. The
banner must name each failure with its reason, and every curl line it prints must work when
run with the real ``curl``. An example deployed from older code is deployed again.
"""

from __future__ import annotations

import hashlib
import runpy
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from modelyard.client import Client
from modelyard.demo import deploy_examples, deploy_examples_when_up
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.curl_lines import curl_lines, run_curl_line
from tests.servers import free_port, run_uvicorn_in_thread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow

MISSING_PACKAGE = """
import modelyard_no_such_package  # an engine whose optional package is not installed

ENDPOINTS = ["never/1"]
SAMPLE = {}


def deploy(client, service, workdir):
    raise AssertionError("not reached")
"""

BROKEN_MODEL = """
ENDPOINTS = ["broken/1"]
SAMPLE = {"x0": 1, "x1": 2}


def deploy(client, service, workdir):
    path = workdir / "broken.pkl"
    path.write_bytes(b"this is not a pickle")
    model = client.upload_model(path, name="broken", project="examples", framework="sklearn")
    client.add_endpoint(service, endpoint="broken", version="1", engine="sklearn", model_id=model["id"])
    return [("broken/1", SAMPLE)]
"""

NEEDS_THE_MISSING_ONE = """
NEEDS = ("sklearn", "xgboost")
ENDPOINTS = ["pipe/1"]
SAMPLE = {}


def deploy(client, service, workdir):
    raise AssertionError("must be skipped: the xgboost example failed")
"""


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    root = tmp_path / "examples"
    for name in ("sklearn", "custom"):
        shutil.copytree(EXAMPLES / name, root / name)
    for name, source in (
        ("xgboost", MISSING_PACKAGE),
        ("lightgbm", BROKEN_MODEL),
        ("pipeline", NEEDS_THE_MISSING_ONE),
    ):
        (root / name).mkdir(parents=True)
        (root / name / "deploy.py").write_text(source)
    return root


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, Settings]]:
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings), port) as url:
        yield url, settings


def run_examples(settings: Settings, root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    thread = deploy_examples_when_up(settings, root)
    thread.join(180)
    assert not thread.is_alive(), "deploying the examples did not finish"
    return capsys.readouterr().err


def test_one_failing_example_does_not_stop_the_others(
    server: tuple[str, Settings], examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, settings = server
    output = run_examples(settings, examples, capsys)
    assert "modelyard is serving the examples" in output, output
    not_deployed = output.split("Not deployed:", 1)[1]
    assert "xgboost: the Python package 'modelyard_no_such_package' is not installed" in not_deployed
    assert "pip install modelyard_no_such_package" in not_deployed
    assert "pipeline: needs the xgboost example(s)" in not_deployed
    assert "lightgbm: broken/1 did not load: cannot load sklearn model" in not_deployed

    lines = curl_lines(output)
    assert [line.split()[3].split("/serve/")[1] for line in lines] == [
        "test_model_sklearn/1",
        "test_model_custom/1",
    ]
    answers = {answer.path: answer for answer in map(run_curl_line, lines)}
    for answer in answers.values():
        assert answer.status == 200, answer
    sk = joblib.load(runpy.run_path(str(EXAMPLES / "sklearn" / "train.py"))["train"](tmp_path))
    assert answers["/test_model_sklearn/1"].body == {"y": sk.predict(np.array([[1, 2]])).tolist()}
    custom = joblib.load(runpy.run_path(str(EXAMPLES / "custom" / "train.py"))["train"](tmp_path))
    rows = answers["/test_model_custom/1"].sample["features"]
    expected = custom.predict_proba(np.array(rows)).argmax(axis=1).tolist()
    assert answers["/test_model_custom/1"].body["classes"] == expected
    # the failed ones are not served; the broken model's endpoint says why
    assert httpx.post(f"{url}/serve/never/1", json={}).status_code == 404
    assert httpx.post(f"{url}/serve/pipe/1", json={}).status_code == 404
    assert httpx.post(f"{url}/serve/broken/1", json={"x0": 1, "x1": 2}).status_code == 503

    # a restart deploys nothing twice: same curl lines, same reasons, no new models
    token = settings.token_file().read_text().strip()
    models = httpx.get(f"{url}/api/models", headers={"authorization": f"Bearer {token}"}).json()
    again = run_examples(settings, examples, capsys)
    assert curl_lines(again) == lines
    assert "xgboost: the Python package" in again and "pipeline: needs the xgboost" in again
    assert httpx.get(f"{url}/api/models").json() == models


def test_nothing_served_says_so(
    server: tuple[str, Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, settings = server
    root = tmp_path / "only-broken"
    (root / "xgboost").mkdir(parents=True)
    (root / "xgboost" / "deploy.py").write_text(MISSING_PACKAGE)
    output = run_examples(settings, root, capsys)
    assert "none of the examples could be served" in output
    assert "serving the examples" not in output and curl_lines(output) == []
    assert "xgboost: the Python package 'modelyard_no_such_package'" in output


def test_an_example_whose_code_changed_is_deployed_again(
    server: tuple[str, Settings], tmp_path: Path
) -> None:
    """An upgrade must not keep serving old example code from ``~/.modelyard``; nothing else moves."""
    url, settings = server
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "sklearn", root / "sklearn")
    code = root / "sklearn" / "preprocess.py"
    with Client(url=url, settings=settings) as client:

        def deployed() -> tuple[str, int]:
            (endpoint,) = client.list_endpoints(settings.service)
            return endpoint["preprocess"]["sha256"], len(client.list_models())

        assert [r.error for r in deploy_examples(client, settings.service, root)] == [None]
        first = deployed()
        assert first == (hashlib.sha256(code.read_bytes()).hexdigest(), 1)
        deploy_examples(client, settings.service, root)
        assert deployed() == first  # unchanged: left as it is
        code.write_text(code.read_text() + "\n# changed in a newer release\n")
        deploy_examples(client, settings.service, root)
        assert deployed() == (hashlib.sha256(code.read_bytes()).hexdigest(), 2)
