"""The gRPC front runs at most ``grpc_max_concurrent_rpcs`` calls at once: past it a call is
refused with RESOURCE_EXHAUSTED at once, instead of queueing behind the slow ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread, wait_for_port
from tests.serving.helpers import Api, wait_for

pytestmark = pytest.mark.slow

LIMIT = 2
SLEEP_S = 1.5

SLOW = f"""
import time

class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        time.sleep({SLEEP_S})
        return data
"""


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("grpc-limits")
    grpc_port = free_port()
    settings = Settings(
        home=tmp / "home",
        sync_wait_s=5,
        grpc_port=grpc_port,
        grpc_max_concurrent_rpcs=LIMIT,
        _env_file=None,  # type: ignore[call-arg]
    )
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        wait_for_port("127.0.0.1", grpc_port)
        api = Api(url, settings.token_file().read_text().strip())
        api.endpoint(endpoint="slow", engine="custom", preprocess=api.code(SLOW))
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            ready = pb.ModelReadyRequest(name="slow")
            wait_for(lambda: stub.ModelReady(ready, timeout=5).ready, timeout=30)
            yield stub
        finally:
            channel.close()
            api.http.close()


def _request() -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    return pb.ModelInferRequest(model_name="slow", inputs=[tensor])


def test_calls_past_the_limit_are_refused_at_once(stub: Any) -> None:
    started = time.monotonic()
    calls = [stub.ModelInfer.future(_request(), timeout=30) for _ in range(LIMIT + 4)]
    done_at: dict[int, float] = {}
    while len(done_at) < len(calls) and time.monotonic() - started < 30:
        for i, call in enumerate(calls):
            if i not in done_at and call.done():
                done_at[i] = time.monotonic() - started
        time.sleep(0.005)
    outcomes: list[tuple[str, float, str]] = []
    for i, call in enumerate(calls):
        try:
            call.result()
            outcomes.append(("ok", done_at[i], ""))
        except grpc.RpcError as exc:
            error: Any = exc
            outcomes.append((error.code().name, done_at[i], error.details()))
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == ["RESOURCE_EXHAUSTED"] * 4 + ["ok"] * LIMIT, outcomes
    refused = [(at, details) for code, at, details in outcomes if code == "RESOURCE_EXHAUSTED"]
    assert all("limit" in details.lower() for _, details in refused), refused
    # the refusals did not wait for the slow calls (those take SLEEP_S each)
    assert max(at for at, _ in refused) < SLEEP_S, outcomes
    # the limit is on calls in flight, not a budget: once they are done, calls are served again
    assert stub.ModelInfer(_request(), timeout=30).model_name == "slow"
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live


def test_the_setting_has_a_bounded_default() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.grpc_max_concurrent_rpcs == 256
    with pytest.raises(ValueError, match="grpc_max_concurrent_rpcs"):
        Settings(grpc_max_concurrent_rpcs=0, _env_file=None)  # type: ignore[call-arg]
