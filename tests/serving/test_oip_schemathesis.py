"""The ``/v2`` routes checked by schemathesis against the Open Inference Protocol's REST spec.

The spec is the KServe open-inference-protocol OpenAPI file, vendored under ``specs/`` (see its
header). Two things are adapted in memory, both because of how the upstream file is written,
not to excuse modelyard:

* its paths spell placeholders shell-style, ``/v2/models/${MODEL_NAME}/...``: in OpenAPI the
  ``$`` would be a literal character of the URL, so ``${`` becomes ``{``;
* ``MODEL_NAME`` / ``MODEL_VERSION`` are pinned to a served model (``mlp``, version ``1``):
  the spec documents only 200 (and 400) answers, so a random name, which rightly gets 404,
  would be reported as an undocumented status.

Every check schemathesis has runs (examples, coverage and fuzzing phases, positive and
negative data), except ``positive_data_acceptance`` on the inference route, whose schema
allows any ``datatype`` string, shape and data: schema-valid requests are almost never valid
tensors for the model, and the spec itself documents 400 for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from schemathesis.config import SchemathesisConfig

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import mlp_onnx

pytestmark = pytest.mark.slow

SPEC = Path(__file__).parent / "specs" / "open_inference_rest.yaml"
MAX_EXAMPLES = 30


def _spec() -> dict[str, Any]:
    raw = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    raw["paths"] = {path.replace("${", "{"): item for path, item in raw["paths"].items()}
    return dict(raw)


CONFIG = SchemathesisConfig.from_dict(
    {
        "parameters": {"path.MODEL_NAME": "mlp", "path.MODEL_VERSION": "1"},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(_spec(), config=CONFIG)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("oip-spec")
    settings = Settings(home=tmp / "home", sync_wait_s=5, _env_file=None)  # type: ignore[call-arg]
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        api = Api(url, settings.token_file().read_text().strip())
        model_id = api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model_id)
        wait_for(lambda: api.http.get("/v2/models/mlp/versions/1/ready").status_code == 200, timeout=30)
        try:
            yield url
        finally:
            api.http.close()


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.filter_too_much],
)
def test_v2_routes_conform_to_the_open_inference_protocol(case: Any, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, timeout=30)


def test_a_valid_inference_answers_as_the_spec_says(base_url: str) -> None:
    """The fuzzer seldom hits a request the model takes; this one is the spec's own example shape,
    so the 200 answer is validated against ``inference_response`` too."""
    infer = schema["/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"]["POST"]
    body = {
        "id": "42",
        "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 0, 0, 0, 0]}],
        "outputs": [{"name": "label"}],
    }
    case = infer.Case(path_parameters={"MODEL_NAME": "mlp", "MODEL_VERSION": "1"}, body=body)
    response = case.call_and_validate(base_url=base_url, timeout=30)
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "42" and answer["model_name"] == "mlp" and answer["model_version"] == "1"
    assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [("label", "INT64", [2])]
