"""A user's code raising on a real replica: what the client, the log and the operator see.

The answer names the hook, the exception and the user's own file:line; the log has the
traceback once (not once per request of a client looping on a bad request); ``/status`` and,
through the control plane, ``modelyard endpoint show`` show the version's last error with its
time and counts; every error answer names the version that failed (``X-Modelyard-Endpoint``,
the body's ``endpoint``, gRPC's ``modelyard-endpoint``), so a failing canary target is found.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import free_port, run_uvicorn_in_thread, wait_for_port
from tests.serving.helpers import Api, status_of, train_sklearn, wait_for

pytestmark = pytest.mark.slow

FEATURES = """\
FEATURES = ("x0", "x1")


def row(body):
    return [body[name] for name in FEATURES]


class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [row(body)]
"""

GOOD = """\
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        return {"y": [1]}
"""

BAD = """\
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        raise ValueError("this version is broken")

    def process(self, data, state, collect_custom_statistics_fn=None):
        return {"y": [0]}
"""

HUGE = """\
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        raise RuntimeError("x" * 100_000)
"""


@dataclass
class Server:
    url: str
    grpc: str
    api: Api
    cli: CliHarness


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("user-code-errors")
    grpc_port = free_port()
    settings = Settings(home=tmp / "home", sync_wait_s=5, grpc_port=grpc_port, _env_file=None)  # type: ignore[call-arg]
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        wait_for_port("127.0.0.1", grpc_port)
        api = Api(url, settings.token_file().read_text().strip())
        train_sklearn(tmp / "m.pkl")
        model = api.model(tmp / "m.pkl", "m")
        api.endpoint(
            endpoint="feat",
            version="1",
            engine="sklearn",
            model_id=model,
            preprocess=api.code(FEATURES, "features.py"),
        )
        tensors = {
            "inputs": [{"name": "x", "dtype": "float32"}],
            "outputs": [{"name": "y", "dtype": "int64"}],
        }
        api.endpoint(endpoint="pick", version="good", engine="custom", preprocess=api.code(GOOD), **tensors)
        api.endpoint(endpoint="pick", version="bad", engine="custom", preprocess=api.code(BAD), **tensors)
        api.endpoint(endpoint="huge", version="1", engine="custom", preprocess=api.code(HUGE, "huge.py"))
        response = api.http.post(
            "/api/services/default/canaries",
            json={"endpoint": "pick", "targets": ["pick/good", "pick/bad"], "weights": [1, 1]},
        )
        assert response.status_code == 201, response.text
        for key in ("feat/1", "pick/good", "pick/bad", "huge/1"):
            wait_for(lambda k=key: (status_of(url, k) or {}).get("state") == "ready", timeout=30)
        yield Server(url, f"127.0.0.1:{grpc_port}", api, CliHarness(cli_env(url, tmp / "home")))


def _shown(server: Server, key: str) -> dict[str, Any]:
    return dict(json.loads(server.cli("endpoint", "show", "--endpoint", key).stdout))


def test_the_answer_the_log_status_and_endpoint_show_point_at_the_users_line(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="modelyard.usercode")
    expected = "preprocess raised KeyError: 'x1' (features.py:5, in row)"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(25):  # a client looping on a bad request
            response = http.post("/serve/feat/1", json={"x0": 1})
            assert response.status_code == 422
            assert response.json() == {"error": expected, "kind": "unprocessable", "endpoint": "feat/1"}
            assert response.headers["x-modelyard-endpoint"] == "feat/1"
    # the traceback, once: the rate limit keeps a hot loop out of the log
    logged = [r for r in caplog.records if r.name == "modelyard.usercode"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].getMessage() == f"endpoint feat/1: {expected}"
    assert logged[0].exc_info is not None
    text = "".join(traceback.format_exception(*logged[0].exc_info))
    assert 'features.py", line 5, in row' in text and "KeyError: 'x1'" in text

    last = status_of(server.url, "feat/1")["last_user_error"]  # type: ignore[index]
    assert last["hook"] == "preprocess" and last["error"] == expected
    assert last["where"] == "features.py:5, in row"
    assert last["count"] == 25 and last["total"] == 25 and last["time"].endswith("Z")

    # through the control plane: the replica reports a newly logged error at once
    def reported() -> dict[str, Any] | None:
        (replica,) = _shown(server, "feat/1")["replicas"]
        return replica.get("last_user_error")

    shown = wait_for(reported, timeout=10, interval=0.2)
    assert shown["error"] == expected and shown["where"] == "features.py:5, in row"
    assert shown["count"] >= 1 and shown["time"].endswith("Z")
    assert _shown(server, "feat/1")["replicas"][0]["state"] == "ready"


def test_a_failing_canary_target_is_named_in_its_error_answers(server: Server) -> None:
    answered: dict[int, set[str]] = {200: set(), 422: set()}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(40):
            response = http.post("/serve/pick", json={"x": [1.0]})
            answered[response.status_code].add(response.headers["x-modelyard-endpoint"])
            if response.status_code == 422:
                body = response.json()
                assert body["endpoint"] == "pick/bad"
                assert body["error"] == (
                    "preprocess raised ValueError: this version is broken (preprocess.py:3, in preprocess)"
                )
    assert answered == {200: {"pick/good"}, 422: {"pick/bad"}}

    # the Open Inference Protocol over gRPC: the trailing metadata names it
    request = pb.ModelInferRequest(model_name="pick")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.extend([1.0])
    failures = []
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(40):
            try:
                _, call = stub.ModelInfer.with_call(request, timeout=30)
            except grpc.RpcError as exc:
                failures.append(exc)
                continue
            assert dict(call.trailing_metadata())["modelyard-endpoint"] == "pick/good"
    assert failures, "the bad target never answered"
    for exc in failures:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        metadata = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
        assert metadata["modelyard-endpoint"] == "pick/bad"
        assert "this version is broken (preprocess.py:3, in preprocess)" in exc.details()  # type: ignore[attr-defined]
    # over OIP HTTP too
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    answers = [httpx.post(f"{server.url}/v2/models/pick/infer", json=body) for _ in range(40)]
    assert {(r.status_code, r.headers["x-modelyard-endpoint"]) for r in answers} == {
        (200, "pick/good"),
        (422, "pick/bad"),
    }


def test_a_huge_error_message_is_cut_everywhere(server: Server) -> None:
    response = httpx.post(f"{server.url}/serve/huge/1", json={"a": 1})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("process raised RuntimeError: xxx") and error.endswith("(huge.py:3, in process)")
    assert len(error) < 600
    assert len(json.dumps(status_of(server.url, "huge/1"))) < 2000

    def reported() -> dict[str, Any] | None:
        (replica,) = _shown(server, "huge/1")["replicas"]
        return replica.get("last_user_error")

    assert wait_for(reported, timeout=10, interval=0.2)["error"] == error
