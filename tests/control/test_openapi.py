"""The control plane documents its API: ``/openapi.json`` lists the ``/api`` routes, ``/docs`` answers.

Checked on the control plane alone and through the all-in-one server (``modelyard serve``), whose
banner tells newcomers to open ``/docs``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings

# (method, path) pairs every user of the API relies on; docs/rest-api.md and docs/data-plane.md name them
EXPECTED = {
    ("get", "/api/health"),
    ("get", "/api/services"),
    ("post", "/api/services"),
    ("delete", "/api/services/{name}"),
    ("post", "/api/artifacts"),
    ("get", "/api/artifacts/{sha256}"),
    ("get", "/api/models"),
    ("post", "/api/models"),
    ("post", "/api/models/{model_id}/publish"),
    ("post", "/api/models/{model_id}/tags"),
    ("delete", "/api/models/{model_id}"),
    ("get", "/api/services/{service}/endpoints"),
    ("post", "/api/services/{service}/endpoints"),
    ("patch", "/api/services/{service}/endpoints/{key}"),
    ("delete", "/api/services/{service}/endpoints/{key}"),
    ("get", "/api/services/{service}/config"),
    ("put", "/api/services/{service}/replicas/{replica_id}"),
    ("put", "/api/services/{service}/replicas/{replica_id}/stats"),
    ("get", "/api/services/{service}/status"),
    ("post", "/api/tokens"),
    ("get", "/api/tokens"),
}


def check_docs(url: str) -> None:
    spec: dict[str, Any] = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "modelyard control plane"
    listed = {(method, path) for path, item in spec["paths"].items() for method in item}
    missing = EXPECTED - listed
    assert not missing, f"not in /openapi.json: {sorted(missing)}"
    # request bodies are described, so the docs page can build a form
    add = spec["paths"]["/api/services/{service}/endpoints"]["post"]
    assert "requestBody" in add
    schema_ref = add["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"endpoint", "engine", "model_id", "preprocess"} <= set(body["properties"])
    docs = httpx.get(f"{url}/docs", timeout=30)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text and "swagger" in docs.text.lower()
    assert httpx.get(f"{url}/redoc", timeout=30).status_code == 200


@pytest.mark.parametrize("kind", ["control-plane", "all-in-one"])
def test_openapi_lists_the_api_and_docs_answer(settings: Settings, kind: str) -> None:
    app: Any = create_control_app(settings) if kind == "control-plane" else create_all_in_one_app(settings)
    with run_uvicorn_in_thread(app) as url:
        check_docs(url)
