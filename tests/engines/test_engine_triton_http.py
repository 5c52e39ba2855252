"""triton engine over HTTP against a real uvicorn server that answers the ways modelyard never does.

Model ``double`` answers JSON outputs; ``refuses`` a 400, ``broken`` a 500 with a plain-text
body, ``slow`` only after 2 s. The remote going away between calls is a 503 for the caller.
Forwarding to a real modelyard (binary tensors, batching) is in tests/serving/test_batching_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from tests.engines.conftest import predict_then_unload
from tests.servers import free_port, run_uvicorn_in_thread

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError, Unavailable, Unprocessable

META = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}], "outputs": []}


async def remote_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    parts = scope["path"].strip("/").split("/")  # v2 models <name> [infer]
    name = parts[2] if len(parts) > 2 else ""
    status, content, kind = 200, b"", b"application/json"
    if scope["method"] == "GET":
        content = orjson.dumps({"name": name, "platform": "test_http", **META})
    elif name == "refuses":
        status, content = 400, orjson.dumps({"error": "x must be positive"})
    elif name == "broken":
        status, content, kind = 500, b"boom", b"text/plain"
    else:
        if name == "slow":
            await asyncio.sleep(2)
        length = int(dict(scope["headers"]).get(b"inference-header-content-length", len(body)))
        request = orjson.loads(body[:length])
        tensor = request["inputs"][0]
        # JSON data, or the binary tensor after the JSON header
        x = np.asarray(tensor["data"] if "data" in tensor else np.frombuffer(body[length:], np.float32))
        shape = request["inputs"][0]["shape"]
        out = {"name": "double", "datatype": "FP32", "shape": shape, "data": (x * 2).tolist()}
        content = orjson.dumps({"model_name": name, "outputs": [out]})
    headers = [(b"content-type", kind), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


@pytest.fixture(scope="module")
def remote_url() -> Iterator[str]:
    with run_uvicorn_in_thread(remote_app) as url:
        yield url


def _engine(make_config: Any, url: str, model: str, **options: Any) -> Any:
    config = make_config("triton", endpoint="ep", options={"url": url, "model_name": model, **options})
    engine = default_engine_registry().create(config, None)
    engine.load()
    return engine


@pytest.mark.parametrize("binary", ["true", "false"])
def test_http_forwards_binary_or_json_and_reads_json_outputs(
    remote_url: str, make_config: Any, collect: Any, binary: str
) -> None:
    engine = _engine(make_config, remote_url, "double", binary=binary)
    assert engine.metadata()["platform"] == "remote:test_http"
    out = predict_then_unload(engine, [[1.0, 2.5], [-3.0, 0.0]], collect)
    np.testing.assert_array_equal(out["double"], np.array([[2.0, 5.0], [-6.0, 0.0]], np.float32))


def test_http_refusal_is_invalid_input_naming_the_remote_model(
    remote_url: str, make_config: Any, collect: Any
) -> None:
    with pytest.raises(InvalidInput, match=r"'refuses' refused the input: x must be positive"):
        predict_then_unload(_engine(make_config, remote_url, "refuses"), [[1.0, 2.0]], collect)


def test_http_server_error_is_unprocessable_with_its_body(
    remote_url: str, make_config: Any, collect: Any
) -> None:
    with pytest.raises(Unprocessable, match=r"'broken' answered 500: boom"):
        predict_then_unload(_engine(make_config, remote_url, "broken"), [[1.0, 2.0]], collect)


def test_http_timeout_is_unavailable(remote_url: str, make_config: Any, collect: Any) -> None:
    engine = _engine(make_config, remote_url, "slow", timeout_s=0.3)
    with pytest.raises(Unavailable, match=r"failed: no answer within 0.3 s") as info:
        predict_then_unload(engine, [[1.0, 2.0]], collect)
    assert info.value.retry_after == 1


def test_http_remote_gone_after_load_is_unavailable(make_config: Any, collect: Any) -> None:
    with run_uvicorn_in_thread(remote_app) as url:
        engine = _engine(make_config, url, "double")
    with pytest.raises(Unavailable, match=r"remote OIP server http://127\.0\.0\.1:\d+ failed"):
        predict_then_unload(engine, [[1.0, 2.0]], collect)


def test_http_load_fails_on_an_unreachable_server(make_config: Any) -> None:
    with pytest.raises(ModelLoadError, match="cannot reach"):
        _engine(make_config, f"http://127.0.0.1:{free_port()}", "double")
