"""docs/getting-started.md as a user runs it: `modelyard serve --examples --workers 2`, then the CLI.

Everything here is real: the console script, two uvicorn worker processes, SQLite, the
examples trained and served, curl-like requests. Marked slow; CI runs it.
"""

from __future__ import annotations

import os
import re
import runpy
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.curl_lines import curl_lines, run_curl_line
from tests.servers import free_port, stop_process_group
from tests.serving.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELYARD = str(Path(sys.executable).with_name("modelyard"))

pytestmark = pytest.mark.slow


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([MODELYARD, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if ok:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Cli, Path]]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_URL": url}
    log = open(home / "serve.log", "w+")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(
        [MODELYARD, "serve", "--port", str(port), "--workers", "2", "--examples"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        # the banner is printed in one write, ending with the /docs line
        while not re.search(r"serving the examples(.|\n)*/docs\n", (home / "serve.log").read_text()):
            assert proc.poll() is None, (home / "serve.log").read_text()
            assert time.monotonic() < deadline, (home / "serve.log").read_text()
            time.sleep(0.3)
        yield url, Cli(env), home
    finally:
        stop_process_group(proc, 20)
        log.close()


def post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def trained(example: str, tmp: Path) -> Any:
    train = runpy.run_path(str(EXAMPLES / example / "train.py"))["train"]
    return train(tmp)


def test_every_example_answers_with_its_models_prediction(
    running: tuple[str, Cli, Path], tmp_path: Path
) -> None:
    import joblib
    import lightgbm as lgb
    import xgboost as xgb

    url, _, _ = running
    sk = joblib.load(trained("sklearn", tmp_path))
    assert post(url, "/serve/test_model_sklearn/1", {"x0": 1, "x1": 2}).json() == {
        "y": sk.predict(np.array([[1, 2]])).tolist()
    }
    row = [5.1, 3.5, 1.4, 0.2]
    booster = xgb.Booster(model_file=str(trained("xgboost", tmp_path)))
    expected = [int(v) for v in booster.predict(xgb.DMatrix(np.array([row])))]
    sample = dict(zip(("x0", "x1", "x2", "x3"), row, strict=True))
    assert post(url, "/serve/test_model_xgb/1", sample).json() == {"y": expected}
    row = [6.7, 3.0, 5.2, 2.3]
    lgbm = lgb.Booster(model_file=str(trained("lightgbm", tmp_path)))
    probabilities = lgbm.predict(np.array([row]))
    answer = post(url, "/serve/test_model_lgbm/1", dict(zip(("x0", "x1", "x2", "x3"), row, strict=True)))
    assert answer.json()["y"] == probabilities.argmax(axis=1).tolist()
    np.testing.assert_allclose(answer.json()["probabilities"], probabilities, rtol=1e-6)
    custom = joblib.load(trained("custom", tmp_path))
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    answer = post(url, "/serve/test_model_custom/1", {"features": rows}).json()
    assert answer["classes"] == custom.predict_proba(np.array(rows)).argmax(axis=1).tolist()
    models = joblib.load(trained("ensemble", tmp_path))
    votes = np.mean([m.predict_proba(np.array([[6.0, 2.9, 4.5, 1.5]])) for m in models.values()], axis=0)
    answer = post(url, "/serve/test_model_ensemble/1", {"features": [[6.0, 2.9, 4.5, 1.5]]}).json()
    assert answer["classes"] == votes.argmax(axis=1).tolist()
    body = {"x0": 6.7, "x1": 3.0, "x2": 5.2, "x3": 2.3}
    sk_answer = post(url, "/serve/test_model_sklearn/1", {"x0": 6.7, "x1": 3.0}).json()["y"]
    lgbm_answer = post(url, "/serve/test_model_lgbm/1", body).json()["y"]
    for pipeline in ("test_pipeline/1", "test_pipeline_async/1"):
        assert post(url, f"/serve/{pipeline}", body).json() == {"sklearn": sk_answer, "lightgbm": lgbm_answer}
    # a user error in the custom example's code is a 422 naming the problem
    response = post(url, "/serve/test_model_custom/1", {"features": "nope"})
    assert response.status_code == 422
    assert "features" in response.json()["error"]


def test_the_printed_curl_lines_answer_with_predictions(running: tuple[str, Cli, Path]) -> None:
    """Every curl line `serve --examples` prints, run as printed with the real curl."""
    url, _, home = running
    output = (home / "serve.log").read_text()
    assert "Not deployed:" not in output, output
    lines = curl_lines(output)
    expected = [
        "/test_model_sklearn/1", "/test_model_xgb/1", "/test_model_lgbm/1", "/test_model_custom/1",
        "/test_model_ensemble/1", "/test_pipeline/1", "/test_pipeline_async/1",
        "/test_model_onnx/1", "/test_model_pytorch/1", "/test_model_keras/1",  # the dev venv has torch, tf
    ]  # fmt: skip
    answers = [run_curl_line(line) for line in lines]
    assert [a.path for a in answers] == expected, output
    for answer in answers:
        assert answer.line.startswith(f"curl -X POST {url}/serve/")
        assert answer.status == 200, answer
        assert isinstance(answer.body, dict) and answer.body, answer
        # the same answer the server gives any client (checked against each model's own
        # prediction in test_every_example_answers_with_its_models_prediction)
        assert answer.body == post(url, f"/serve{answer.path}", answer.sample).json()
    predictions = {a.path: a.body for a in answers}
    assert set(predictions["/test_model_sklearn/1"]) == {"y"}
    assert set(predictions["/test_pipeline/1"]) == {"sklearn", "lightgbm"}


PREPROCESS = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist(), "code": "TAG"}
"""


def answers_on_every_worker(url: str, path: str, body: Any, check: Any, n: int = 12) -> bool:
    """True when ``n`` consecutive requests (spread over both workers) all pass ``check``."""
    for _ in range(n):
        response = post(url, path, body)
        if response.status_code != 200 or not check(response.json()):
            return False
    return True


def test_cli_walkthrough(running: tuple[str, Cli, Path], tmp_path: Path) -> None:
    url, cli, _ = running
    model_file = trained("sklearn", tmp_path)
    upload = cli(
        "model",
        "upload",
        "--name",
        "iris",
        "--project",
        "demo",
        "--framework",
        "sklearn",
        "--path",
        str(model_file),
        "--publish",
        "--tags",
        "a",
        "b",
    )
    model_id = upload.stdout.strip().splitlines()[-1]
    assert len(model_id) == 32 and model_id.isalnum()
    shown = cli("model", "show", model_id).stdout
    assert '"published": true' in shown and '"a"' in shown
    (tmp_path / "p1.py").write_text(PREPROCESS.replace("TAG", "one"))
    (tmp_path / "p2.py").write_text(PREPROCESS.replace("TAG", "two"))

    started = time.monotonic()
    cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
        "--preprocess",
        str(tmp_path / "p1.py"),
        "--input-name",
        "x0",
        "x1",
        "--input-type",
        "float32",
        "float32",
    )
    wait_for(
        lambda: answers_on_every_worker(
            url, "/serve/iris/1", {"x0": 1, "x1": 2}, lambda a: a["code"] == "one"
        )
    )
    assert time.monotonic() - started < 3  # includes the CLI process start; the bench measures < 1 s

    cli(
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
        str(tmp_path / "p2.py"),
    )
    wait_for(
        lambda: answers_on_every_worker(
            url, "/serve/iris/1", {"x0": 1, "x1": 2}, lambda a: a["code"] == "two"
        )
    )

    listed = cli("endpoint", "list").stdout
    assert "iris/1" in listed and "test_model_sklearn/1" in listed
    refused = cli("model", "remove", model_id, ok=False)
    assert refused.returncode == 1
    assert "iris/1" in refused.stderr
    cli("endpoint", "remove", "--endpoint", "iris", "--version", "1")
    wait_for(lambda: post(url, "/serve/iris/1", {"x0": 1, "x1": 2}).status_code == 404)
    cli("model", "remove", model_id)
    assert model_id not in cli("model", "list").stdout

    cli("service", "create", "staging")
    assert "staging" in cli("service", "list").stdout
    cli("service", "remove", "staging")
    assert "staging" not in cli("service", "list").stdout


def test_add_to_first_answer_latency(running: tuple[str, Cli, Path], tmp_path: Path) -> None:
    """From the API call returning to the first 200 (the README quotes the median of 20)."""
    from modelyard.client import Client

    url, _, home = running
    client = Client(url=url, token=(home / "token").read_text().strip())
    model_file = trained("sklearn", tmp_path)
    model = client.upload_model(model_file, name="latency", project="demo", framework="sklearn")
    code = tmp_path / "p.py"
    code.write_text(PREPROCESS.replace("TAG", "x"))
    latencies = []
    for version in range(1, 21):
        client.add_endpoint(
            "default",
            endpoint="latency",
            version=str(version),
            engine="sklearn",
            model_id=model["id"],
            preprocess=code,
        )
        returned = time.monotonic()
        wait_for(
            lambda v=version: post(url, f"/serve/latency/{v}", {"x0": 1, "x1": 2}).status_code == 200,
            interval=0.005,
        )
        latencies.append(time.monotonic() - returned)
    assert statistics.median(latencies) < 1.0, latencies
