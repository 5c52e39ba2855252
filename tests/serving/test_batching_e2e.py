"""Dynamic batching and the triton engine on real servers (uvicorn), with concurrent distinct requests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from modelyard.server import AllInOneApp, create_all_in_one_app
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api, wait_for
from tests.serving.oip_models import mlp_expected, mlp_onnx

pytestmark = pytest.mark.slow

FAIL_ON_MARKER = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if float(body["X"][0][0]) == -999:
            raise ValueError("marker row refused")
        return body
"""


class Served:
    def __init__(self, app: AllInOneApp, url: str, api: Api) -> None:
        self.app, self.url, self.api = app, url, api

    def batcher(self, key: str) -> Any:
        return self.app.inference.runtime.dataplane.table.ready[key].batcher

    def ready(self, name: str) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/v2/models/{name}/ready").status_code == 200, timeout=20)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    tmp = tmp_path_factory.mktemp("batching")
    with _server(tmp / "a") as a, _server(tmp / "b") as b:
        model = a.api.model(mlp_onnx(tmp / "mlp.onnx"), "mlp", framework="onnx")
        opts = {"max_batch_size": 16, "max_batch_delay_ms": 20}
        a.api.endpoint(endpoint="mlp", version="1", engine="onnx", model_id=model, options=opts)
        a.api.endpoint(endpoint="plain", version="1", engine="onnx", model_id=model)
        a.api.endpoint(
            endpoint="marked",
            engine="onnx",
            model_id=model,
            options=opts,
            preprocess=a.api.code(FAIL_ON_MARKER),
        )
        model_b = b.api.model(mlp_onnx(tmp / "mlp-b.onnx"), "mlp", framework="onnx")
        b.api.endpoint(endpoint="remote_mlp", version="2", engine="onnx", model_id=model_b)
        b.ready("remote_mlp")
        a.api.endpoint(
            endpoint="via_triton",
            engine="triton",
            options={"url": b.url, "model_name": "remote_mlp", "model_version": "2", **opts},
        )
        for name in ("mlp", "plain", "marked", "via_triton"):
            a.ready(name)
        yield a, b


class _server:
    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home, sync_wait_s=5, _env_file=None)  # type: ignore[call-arg]

    def __enter__(self) -> Served:
        app = create_all_in_one_app(self.settings)
        self.ctx = run_uvicorn_in_thread(app)
        url = self.ctx.__enter__()
        return Served(app, url, Api(url, self.settings.token_file().read_text().strip()))

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)


def _rows(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(n)]


def _oip_binary(url: str, model: str, x: np.ndarray) -> httpx.Response:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "Y"}, {"name": "label"}],
        }
    )
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        content=head + x.tobytes(),
        headers={"inference-header-content-length": str(len(head))},
        timeout=30,
    )


def test_concurrent_oip_requests_each_get_their_own_answer(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    batcher = a.batcher("mlp/1")
    before = (batcher.batches, batcher.batched_requests)
    xs = _rows(64)
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda x: _oip_binary(a.url, "mlp", x), xs))
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        y, label = mlp_expected(x)
        out = {o["name"]: o for o in response.json()["outputs"]}
        np.testing.assert_allclose(np.array(out["Y"]["data"]).reshape(out["Y"]["shape"]), y, rtol=1e-5)
        assert out["label"]["data"] == label.tolist()
    batches = batcher.batches - before[0]
    assert batcher.batched_requests - before[1] == 64
    assert batches < 64  # requests were stacked


def test_serve_route_batches_too_and_bad_requests_fail_alone(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    xs = _rows(24)
    bodies: list[Any] = [{"X": x.tolist()} for x in xs]
    bodies[3] = {"X": [[-999, 0, 0, 0]]}  # refused by preprocess
    bodies[7] = {"X": [[1, 2, 3]]}  # wrong feature count: the model refuses it
    with ThreadPoolExecutor(24) as pool:
        responses = list(
            pool.map(
                lambda b: httpx.post(f"{a.url}/serve/marked", json=b, timeout=30),
                bodies,
            )
        )
    assert responses[3].status_code == 422 and "marker row refused" in responses[3].json()["error"]
    assert responses[7].status_code == 400, responses[7].text
    for i, (x, response) in enumerate(zip(xs, responses, strict=True)):
        if i in (3, 7):
            continue
        assert response.status_code == 200, response.text
        assert response.json()["label"] == mlp_expected(x)[1].tolist()


def test_triton_engine_forwards_to_a_second_modelyard(servers: tuple[Served, Served]) -> None:
    a, _ = servers
    meta = httpx.get(f"{a.url}/v2/models/via_triton").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    client = triton.InferenceServerClient(url=a.url.removeprefix("http://"))
    try:
        x = _rows(3)[2]
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("via_triton", [inp])
        np.testing.assert_allclose(result.as_numpy("Y"), mlp_expected(x)[0], rtol=1e-5)
    finally:
        client.close()
    # /serve with JSON floats (float64): cast to the remote FP32; concurrent calls batch into one
    xs = _rows(16)
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda x: httpx.post(f"{a.url}/serve/via_triton", json=x.tolist(), timeout=30), xs)
        )
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["label"] == mlp_expected(x)[1].tolist()
    assert a.batcher("via_triton").batches < 17
    bad = httpx.post(f"{a.url}/serve/via_triton", json=[[1, 2, 3]], timeout=30)
    assert bad.status_code == 400 and "remote_mlp" in bad.json()["error"]
