"""Content-Length as the data plane reads it: ASCII digits only, and never thousands of them.

uvicorn refuses such headers itself, but the ASGI app must not depend on its server for that:
``"²"`` is a digit to :meth:`str.isdigit` and not to :func:`int`, and :func:`int` refuses
more than 4300 digits — both were a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelyard.serving.app import InferenceApp
from modelyard.serving.oip import read_request_body
from modelyard.serving.runtime import InferenceRuntime
from modelyard.settings import Settings


def _receive(*chunks: bytes) -> Any:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


@pytest.mark.parametrize("length", [b"\xb2", "²".encode(), "١٢".encode(), b"9" * 5000, b"0" * 30 + b"2"])
def test_a_content_length_that_is_not_a_plain_number_is_not_trusted(length: bytes) -> None:
    scope = {"headers": [(b"content-length", length)]}
    body = asyncio.run(read_request_body(scope, _receive(b"{", b"}"), 1024))
    assert bytes(body) == b"{}"  # read as it came, the limit counted on the bytes


def test_a_plain_content_length_is_used() -> None:
    scope = {"headers": [(b"content-length", b"2")]}
    body = asyncio.run(read_request_body(scope, _receive(b"{}"), 1024))
    assert isinstance(body, bytearray) and body == b"{}"


def test_serve_refuses_a_content_length_of_thousands_of_digits(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", _env_file=None)  # type: ignore[call-arg]
    runtime = InferenceRuntime(settings)
    app = InferenceApp(runtime, manage_lifespan=False)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/serve/iris/1",
            "headers": [(b"content-length", b"9" * 5000), (b"content-type", b"application/json")],
        }
        try:
            await app(scope, _receive(b"{}"), send)
        finally:
            await runtime.http.aclose()

    try:
        asyncio.run(call())
    finally:
        for executor in (runtime.executor, runtime.nested_executor, runtime.load_executor):
            executor.shutdown(wait=False)
    assert sent[0]["status"] == 413, sent
    assert "larger than the limit" in orjson.loads(sent[1]["body"])["error"]
