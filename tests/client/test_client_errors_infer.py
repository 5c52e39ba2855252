"""Error mapping (a pure function of the response) and ``infer`` against a real all-in-one server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard import errors
from modelyard.client import Client, error_from_response
from modelyard.settings import Settings
from tests.servers import run_uvicorn_in_thread


def _response(status: int, body: object = None, *, text: str | None = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://cp/api/things")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("kind", "status", "cls"),
    [
        ("bad_request", 400, errors.BadRequest),
        ("invalid_input", 400, errors.InvalidInput),
        ("unauthorized", 401, errors.Unauthorized),
        ("forbidden", 403, errors.Forbidden),
        ("not_found", 404, errors.NotFound),
        ("conflict", 409, errors.Conflict),
        ("payload_too_large", 413, errors.PayloadTooLarge),
        ("unprocessable", 422, errors.Unprocessable),
        ("model_load_error", 422, errors.ModelLoadError),
        ("user_code_error", 422, errors.UserCodeError),
        ("unavailable", 503, errors.Unavailable),
        ("overloaded", 503, errors.Overloaded),
        ("validation_error", 422, errors.BadRequest),
    ],
)
def test_kind_maps_to_exception(kind: str, status: int, cls: type[errors.ModelyardError]) -> None:
    exc = error_from_response(_response(status, {"error": f"{kind} happened", "kind": kind}))
    assert type(exc) is cls
    assert str(exc) == f"{kind} happened"


def test_unknown_kind_falls_back_to_status() -> None:
    exc = error_from_response(_response(404, {"error": "no route", "kind": "http_error"}))
    assert type(exc) is errors.NotFound and exc.message == "no route"


def test_retry_after_is_kept() -> None:
    exc = error_from_response(
        _response(503, {"error": "queue full", "kind": "overloaded"}, **{"retry-after": "2"})
    )
    assert isinstance(exc, errors.Overloaded) and exc.retry_after == 2.0


def test_fastapi_detail_and_plain_text_bodies() -> None:
    detail = {"detail": [{"loc": ["body", "name"], "msg": "Field required"}]}
    exc = error_from_response(_response(422, detail))
    assert type(exc) is errors.BadRequest and "name: Field required" in str(exc)

    proxy = error_from_response(_response(502, text="Bad Gateway"))
    assert type(proxy) is errors.ModelyardError
    assert "502" in str(proxy) and "Bad Gateway" in str(proxy)


ECHO = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if isinstance(body, bytes):
            return body[::-1]          # raw bytes in, raw bytes out
        if body.get("sleep"):
            import time
            time.sleep(body["sleep"])
        if body.get("fail"):
            raise ValueError("input 'x' expects FP32, got INT64")
        return body

    def process(self, data, state, collect_custom_statistics_fn=None):
        return data
"""


@pytest.fixture
def echo(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """An all-in-one server with a custom ``echo/1`` endpoint that returns what it gets."""
    from modelyard.server import create_all_in_one_app

    settings = settings.model_copy(update={"sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        code = tmp_path / "echo.py"
        code.write_text(ECHO)
        with Client(url, settings=settings) as client:
            client.add_endpoint("default", endpoint="echo", version="1", engine="custom", preprocess=code)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.infer("echo", version="1", data={"ready": 1})
                    break
                except (errors.NotFound, errors.Unavailable):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        yield url, settings


def test_infer_posts_json_gzip_and_bytes(echo: tuple[str, Settings]) -> None:
    url, settings = echo
    with Client(url, settings=settings) as c:
        assert c.infer("echo", version="1", data={"x": [[1, 2, 3, 4]]}) == {"x": [[1, 2, 3, 4]]}
        assert c.infer("echo", data={"x": 1}, gzip=True) == {"x": 1}  # no version: highest
        assert c.infer("echo", version="1", data=b"\x89PNG") == b"GNP\x89"


def test_infer_errors_map_to_kinds(echo: tuple[str, Settings]) -> None:
    url, settings = echo
    with Client(url, settings=settings) as c:
        with pytest.raises(errors.Unprocessable, match="FP32"):
            c.infer("echo", version="1", data={"fail": True})
        with pytest.raises(errors.NotFound, match="'echo/9'"):
            c.infer("echo", version="9", data={})


def test_timeout_is_unavailable(echo: tuple[str, Settings]) -> None:
    url, settings = echo
    with (
        Client(url, settings=settings, timeout=0.3) as c,
        pytest.raises(errors.Unavailable, match="did not answer"),
    ):
        c.infer("echo", version="1", data={"sleep": 2})


def test_list_models_query_parameters(echo: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = echo
    model_file = tmp_path / "m.bin"
    model_file.write_bytes(b"weights")
    with Client(url, settings=settings) as c:
        a = c.upload_model(model_file, name="iris-a", project="demo", framework="custom", tags=["a", "b"])
        c.upload_model(model_file, name="iris-b", project="demo", framework="custom", tags=["a"])
        c.upload_model(model_file, name="iris-c", project="other", framework="custom", tags=["a", "b"])
        found = c.list_models(name="ir.*", project="demo", tags=["a", "b"], published=False, limit=3)
        assert [m["id"] for m in found] == [a["id"]]
