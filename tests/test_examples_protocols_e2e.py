"""Every bundled example answers the same prediction over every protocol docs/data-plane.md promises.

The real examples are deployed as ``modelyard serve --examples`` deploys them, on a real
replica with ``--grpc-port``; each endpoint is then asked its example's request over
``/serve`` (plain HTTP), the Open Inference Protocol with the real ``tritonclient.http``
(JSON tensors and binary tensors) and ``tritonclient.grpc``, and KServe V1 (plain HTTP, with
and without ``/versions/<v>``). The OIP inputs are built from the metadata the server
publishes, as a tritonclient user does. ``examples/inference.yaml`` is applied and served as
its comment says, and its canary must never fail.
"""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import triton_to_np_dtype

from modelyard.client import Client
from modelyard.demo import ORDER, deploy_examples, wait_until_served
from modelyard.deploy.apply import apply
from modelyard.deploy.plan import plan_spec
from modelyard.deploy.spec import parse_file
from modelyard.server import create_all_in_one_app, create_inference_app
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread, wait_for_port
from tests.serving.helpers import Api, status_of, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    grpc: str
    settings: Settings
    samples: dict[str, Any]
    """endpoint key → its example's deploy module (SAMPLE, V1_SAMPLE...)."""


def _example_modules() -> dict[str, dict[str, Any]]:
    """Each endpoint key of the bundled examples → the globals of its ``deploy.py``."""
    out = {}
    for name in ORDER:
        module = runpy.run_path(str(EXAMPLES / name / "deploy.py"))
        for key in module["ENDPOINTS"]:
            out[key] = module
    return out


MODULES = _example_modules()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("examples-protocols")
    port, grpc_port = free_port(), free_port()
    settings = Settings(  # type: ignore[call-arg]
        home=tmp / "home", host="127.0.0.1", port=port, grpc_port=grpc_port, sync_wait_s=5, _env_file=None
    )
    with run_uvicorn_in_thread(create_all_in_one_app(settings), port) as url:
        wait_for_port("127.0.0.1", grpc_port)
        with Client(url=url, settings=settings) as client:
            results = deploy_examples(client, settings.service, EXAMPLES)
        assert [r.error for r in results if r.error] == []
        samples = [pair for r in results for pair in r.samples]
        assert sorted(key for key, _ in samples) == sorted(MODULES)
        assert wait_until_served(url, samples) == {}
        yield Served(url, f"127.0.0.1:{grpc_port}", settings, MODULES)


def _v1_predictions(answer: Any) -> Any:
    """What ``/v1`` answers as ``predictions`` for what ``/serve`` answered."""
    return next(iter(answer.values())) if isinstance(answer, dict) and len(answer) == 1 else answer


def _oip_inputs(meta: dict[str, Any], sample: dict[str, Any], module: Any) -> list[tuple[Any, np.ndarray]]:
    """``(module.InferInput, data)`` per declared input, the data from the /serve sample by name."""
    pairs = []
    for tensor in meta["inputs"]:
        data = np.asarray(sample[tensor["name"]], dtype=triton_to_np_dtype(tensor["datatype"]))
        data = data.reshape(-1) if data.ndim == 0 else data  # one row: a scalar feature is [value]
        pairs.append((module.InferInput(tensor["name"], list(data.shape), tensor["datatype"]), data))
    return pairs


@pytest.mark.parametrize("key", sorted(MODULES))
def test_every_example_answers_the_same_over_serve_oip_and_v1(served: Served, key: str) -> None:
    module = served.samples[key]
    endpoint, version = key.split("/")
    serve = httpx.post(f"{served.url}/serve/{key}", json=module["SAMPLE"], timeout=30)
    assert serve.status_code == 200, serve.text
    assert serve.headers["x-modelyard-endpoint"] == key
    answer = serve.json()

    # KServe V1: the body goes to the example's code as sent; with and without the version
    for path in (f"/v1/models/{endpoint}/versions/{version}:predict", f"/v1/models/{endpoint}:predict"):
        v1 = httpx.post(f"{served.url}{path}", json=module["V1_SAMPLE"], timeout=30)
        assert v1.status_code == 200, (path, v1.text)
        assert v1.json() == {"predictions": _v1_predictions(answer)}, path
        assert v1.headers["x-modelyard-endpoint"] == key
    ready = httpx.get(f"{served.url}/v1/models/{endpoint}/versions/{version}", timeout=10)
    assert ready.json() == {"name": endpoint, "ready": True}

    # the Open Inference Protocol, from the metadata the model publishes
    meta = httpx.get(f"{served.url}/v2/models/{endpoint}/versions/{version}", timeout=10).json()
    assert [t["name"] for t in meta["outputs"]] == list(answer), "every example declares its outputs"
    http = th.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        for binary in (False, True):
            inputs = []
            for infer_input, data in _oip_inputs(meta, module["SAMPLE"], th):
                infer_input.set_data_from_numpy(data, binary_data=binary)
                inputs.append(infer_input)
            outputs = [th.InferRequestedOutput(t["name"], binary_data=binary) for t in meta["outputs"]]
            result = http.infer(endpoint, inputs, model_version=version, outputs=outputs)
            got = {t["name"]: result.as_numpy(t["name"]).tolist() for t in meta["outputs"]}
            assert got == answer, f"tritonclient.http, binary={binary}"
    finally:
        http.close()
    grpc = tg.InferenceServerClient(served.grpc)
    try:
        inputs = []
        for infer_input, data in _oip_inputs(meta, module["SAMPLE"], tg):
            infer_input.set_data_from_numpy(data)
            inputs.append(infer_input)
        result = grpc.infer(endpoint, inputs, model_version=version)
        got = {t["name"]: result.as_numpy(t["name"]).tolist() for t in meta["outputs"]}
        assert got == answer, "tritonclient.grpc"
    finally:
        grpc.close()


def test_the_examples_answer_what_their_models_predict(served: Served, tmp_path: Path) -> None:
    """The common answer is the models' own prediction (not the same wrong one everywhere)."""
    sk = joblib.load(runpy.run_path(str(EXAMPLES / "sklearn" / "train.py"))["train"](tmp_path))
    answer = httpx.post(f"{served.url}/serve/test_model_sklearn/1", json={"x0": [1, -3], "x1": [2, -1]})
    assert answer.json() == {"y": sk.predict(np.array([[1.0, 2.0], [-3.0, -1.0]])).tolist()}
    custom = joblib.load(runpy.run_path(str(EXAMPLES / "custom" / "train.py"))["train"](tmp_path))
    rows = MODULES["test_model_custom/1"]["V1_SAMPLE"]["instances"]
    v1 = httpx.post(f"{served.url}/v1/models/test_model_custom:predict", json={"instances": rows})
    assert v1.json()["predictions"]["classes"] == custom.predict(np.array(rows)).tolist()
    # V1 instances by position or by name are the same rows
    by_name = httpx.post(
        f"{served.url}/v1/models/test_model_sklearn:predict", json={"instances": [{"x0": 1, "x1": 2}]}
    )
    by_position = httpx.post(
        f"{served.url}/v1/models/test_model_sklearn:predict", json={"instances": [[1, 2]]}
    )
    assert by_name.json() == by_position.json() == {"predictions": sk.predict(np.array([[1, 2]])).tolist()}
    missing = httpx.post(
        f"{served.url}/v1/models/test_model_sklearn/versions/9:predict", json={"instances": []}
    )
    assert missing.status_code == 404 and "test_model_sklearn/9" in missing.json()["error"]


def test_inference_yaml_serves_its_canary_without_failures(served: Served, tmp_path: Path) -> None:
    """``examples/inference.yaml`` as its comment says: models iris 3 and 4 of project demo,
    ``apply -f``, a replica of service prod; every ``/serve/iris`` answers, from both predictors."""
    text = (EXAMPLES / "inference.yaml").read_text()
    assert "issue" not in text.lower()
    assert "modelyard inference --service prod" in text
    model = runpy.run_path(str(EXAMPLES / "sklearn" / "train.py"))["train"](tmp_path)
    with Client(url=served.url, settings=served.settings) as client:
        existing = client.list_models(name="iris", project="demo")
        for _ in range(4 - len(existing)):
            client.upload_model(model, name="iris", project="demo", framework="sklearn")
        apply(client, [plan_spec(spec) for spec in parse_file(EXAMPLES / "inference.yaml")])
    token = served.settings.token_file().read_text().strip()
    replica = served.settings.model_copy(
        update={"service": "prod", "control_plane_url": served.url, "token": token, "grpc_port": None}
    )
    with run_uvicorn_in_thread(create_inference_app(replica)) as url:
        wait_for(lambda: httpx.get(f"{url}/health/ready", timeout=10).status_code == 200, timeout=60)
        answered: dict[str, int] = {}
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(120):
                response = http.post("/serve/iris", json={"x0": 1, "x1": 2})
                assert response.status_code == 200, response.text
                assert response.json() == {"y": [1]}
                key = response.headers["x-modelyard-endpoint"]
                answered[key] = answered.get(key, 0) + 1
        assert set(answered) == {"iris/a", "iris/b"}, answered


TRANSFORMER = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        # KServe's transformer contract: the V1 body as sent, the protocol in the state
        return {"predictions": [len(data["instances"])], "protocol": state.get("protocol")}
"""


def test_v1_body_reaches_the_first_user_hook_and_a_full_answer_passes(served: Served) -> None:
    token = served.settings.token_file().read_text().strip()
    api = Api(served.url, token)
    api.endpoint(endpoint="transformer", version="1", engine="custom", preprocess=api.code(TRANSFORMER))
    wait_for(lambda: (status_of(served.url, "transformer/1") or {}).get("state") == "ready", timeout=30)
    response = httpx.post(f"{served.url}/v1/models/transformer:predict", json={"instances": [[1], [2], [3]]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [3], "protocol": "v1"}
