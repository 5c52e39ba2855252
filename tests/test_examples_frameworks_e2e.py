"""The PyTorch, ONNX and TensorFlow examples: real models on real data; skipped where their framework is not.

Deployed as ``modelyard serve --examples`` deploys them, on a real server: each endpoint must
answer, for every held-out row of its dataset, what the model file the server stores predicts
when its own framework runs it (``torch.export.load``, ``onnxruntime``, ``tf.saved_model.load``
on the downloaded artifact), and be a model worth the name on those rows. That each answers the
same over ``/serve``, ``/v2`` (tritonclient HTTP JSON/binary and gRPC) and ``/v1`` is
``tests/test_examples_protocols_e2e.py``'s, which iterates ``demo.ORDER`` (these three included).

``make serve`` installs ``.[all]``, without torch or tensorflow: there those examples must be
skipped with the extra that installs them while the others are served. Setting a module's
``sys.modules`` entry to ``None`` is how Python marks it unimportable (``import`` raises
``ModuleNotFoundError``, ``importlib.util.find_spec`` answers ``None``): that is the missing
framework here, in a venv that has it.
"""

from __future__ import annotations

import runpy
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.client import Client
from modelyard.demo import deploy_examples, deploy_examples_when_up, wait_until_served
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.curl_lines import curl_lines, run_curl_line
from tests.servers import free_port, run_uvicorn_in_thread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FRAMEWORKS = {
    "onnx": "test_model_onnx/1",
    "pytorch": "test_model_pytorch/1",
    "tensorflow": "test_model_keras/1",
}
"""example folder -> the endpoint it serves, in ``demo.ORDER``."""

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    settings: Settings


def copy_examples(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        shutil.copytree(EXAMPLES / name, root / name)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("examples-frameworks")
    root = copy_examples(tmp / "examples", tuple(FRAMEWORKS))
    port = free_port()
    settings = Settings(  # type: ignore[call-arg]
        home=tmp / "home", host="127.0.0.1", port=port, sync_wait_s=5, _env_file=None
    )
    with run_uvicorn_in_thread(create_all_in_one_app(settings), port) as url:
        with Client(url=url, settings=settings) as client:
            results = deploy_examples(client, settings.service, root)
        assert [(r.name, r.error, r.skipped) for r in results] == [(n, None, None) for n in FRAMEWORKS]
        samples = [pair for r in results for pair in r.samples]
        assert [key for key, _ in samples] == list(FRAMEWORKS.values())
        assert wait_until_served(url, samples, timeout=120) == {}
        yield Served(url, settings)


def served_model(served: Served, key: str, dest: Path) -> Path:
    """The model file (or unpacked folder) the server serves at ``key``, downloaded as stored."""
    endpoint, version = key.split("/")
    with Client(url=served.url, settings=served.settings) as client:
        model_id = client.get_endpoint(served.settings.service, endpoint, version)["model_id"]
        artifact = client.get_model(model_id)["artifact"]
        path = client.download(artifact["sha256"], dest / artifact["filename"])
    if artifact["kind"] != "folder":
        return path
    with tarfile.open(path) as tar:
        tar.extractall(dest / "unpacked", filter="data")
    (saved_model,) = (dest / "unpacked").rglob("saved_model.pb")
    return saved_model.parent


def held_out(example: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows the example's training kept aside, and their true answers."""
    _, x, _, y = runpy.run_path(str(EXAMPLES / example / "train.py"))["split"]()
    return x, y


def serve(served: Served, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{served.url}/serve/{key}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelyard-endpoint"] == key
    return dict(response.json())


def test_onnx_example_answers_what_onnxruntime_computes_with_its_graph(
    served: Served, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime

    path = served_model(served, FRAMEWORKS["onnx"], tmp_path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # the hand-written graph is valid ONNX
    rows, cultivars = held_out("onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected, probabilities = session.run(
        ["cultivar", "probabilities"], {"features": rows.astype(np.float32)}
    )
    answer = serve(served, FRAMEWORKS["onnx"], {"features": rows.tolist()})
    assert answer["cultivar"] == expected.tolist()
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=5e-5)
    assert (expected == cultivars).mean() >= 0.9  # a third of the wines, never seen in training


def test_pytorch_example_answers_what_its_exported_program_computes(served: Served, tmp_path: Path) -> None:
    import torch

    program = torch.export.load(served_model(served, FRAMEWORKS["pytorch"], tmp_path)).module()
    images, digits = held_out("pytorch")
    with torch.inference_mode():
        logits = program(torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)).numpy()
    answer = serve(served, FRAMEWORKS["pytorch"], {"image": images.tolist()})
    assert answer["digit"] == logits.argmax(axis=1).tolist()
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=5e-5)
    assert (np.array(answer["digit"]) == digits).mean() >= 0.9  # 450 held-out images


def test_tensorflow_example_answers_what_its_saved_model_computes(served: Served, tmp_path: Path) -> None:
    import tensorflow as tf

    signature = tf.saved_model.load(str(served_model(served, FRAMEWORKS["tensorflow"], tmp_path)))
    rows, progression = held_out("tensorflow")
    (expected,) = signature.signatures["serving_default"](measurements=tf.constant(rows)).values()
    features = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    body = {name: rows[:, i].tolist() for i, name in enumerate(features)}  # by name, one list per input
    answer = serve(served, FRAMEWORKS["tensorflow"], body)
    np.testing.assert_allclose(answer["progression"], expected.numpy()[:, 0], atol=0.05 + 1e-4)
    predicted = np.array(answer["progression"])
    r2 = 1 - ((progression - predicted) ** 2).sum() / ((progression - progression.mean()) ** 2).sum()
    assert r2 >= 0.2, r2  # predicting the mean scores 0
    # the same rows by position over KServe V1
    v1 = httpx.post(
        f"{served.url}/v1/models/test_model_keras:predict", json={"instances": rows.tolist()}, timeout=60
    )
    assert v1.json() == {"predictions": answer["progression"]}


def test_bad_requests_name_the_problem(served: Served) -> None:
    for key, body, says in (
        (FRAMEWORKS["pytorch"], {"image": [[1, 2, 3]]}, "8x8 pixels"),
        (FRAMEWORKS["onnx"], {"features": [[1.0] * 12]}, "13 measurements"),
        (FRAMEWORKS["tensorflow"], {"age": 54, "sex": 2}, "missing measurement(s) bmi"),
    ):
        response = httpx.post(f"{served.url}/serve/{key}", json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert says in response.json()["error"], response.json()


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, Settings]]:
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings), port) as url:
        yield url, settings


def test_without_torch_and_tensorflow_those_are_skipped_naming_their_extras(
    server: tuple[str, Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What ``make serve`` (``.[all]``) prints: the others are served, these two skipped, not failed."""
    url, settings = server
    root = copy_examples(tmp_path / "examples", ("sklearn", *FRAMEWORKS))
    for module in ("torch", "tensorflow"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModuleNotFoundError):
        import torch  # noqa: F401
    for name in FRAMEWORKS:  # reading an example (its endpoints, samples) never imports its framework
        assert runpy.run_path(str(root / name / "deploy.py"))["ENDPOINTS"] == [FRAMEWORKS[name]]

    thread = deploy_examples_when_up(settings, root)
    thread.join(180)
    assert not thread.is_alive(), "deploying the examples did not finish"
    output = capsys.readouterr().err
    assert "modelyard is serving the examples" in output, output
    assert "Not deployed:" not in output, output
    skipped = output.split("Skipped (an optional framework is not installed):", 1)[1].split("\n\n", 1)[0]
    assert [line.strip() for line in skipped.strip().splitlines()] == [
        "pytorch: torch not installed (pip install 'modelyard[torch]')",
        "tensorflow: tensorflow not installed (pip install 'modelyard[tensorflow]')",
    ]
    answers = [run_curl_line(line) for line in curl_lines(output)]
    assert [a.path for a in answers] == ["/test_model_sklearn/1", "/test_model_onnx/1"]
    assert [a.status for a in answers] == [200, 200], answers
    assert answers[1].body["cultivar"] == [0, 1]  # the two held-out wines of the sample
    # nothing was trained or registered for the skipped ones
    with Client(url=url, settings=settings) as client:
        keys = {e["key"] for e in client.list_endpoints(settings.service)}
        frameworks = {m["framework"] for m in client.list_models()}
    assert keys == {"test_model_sklearn/1", "test_model_onnx/1"}
    assert frameworks == {"sklearn", "onnx"}
    assert httpx.post(f"{url}/serve/test_model_pytorch/1", json={}).status_code == 404
