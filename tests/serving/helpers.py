"""Small REST helpers for data-plane tests: register models and endpoints over the real API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression


class Api:
    """The control plane REST API with the admin token (what the SDK does, spelled out)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30)

    def upload(self, data: bytes) -> str:
        response = self.http.post("/api/artifacts", content=data)
        assert response.status_code == 201, response.text
        return str(response.json()["sha256"])

    def model(self, path: Path, name: str, framework: str = "sklearn", project: str = "test") -> str:
        sha = self.upload(path.read_bytes())
        response = self.http.post(
            "/api/models",
            json={
                "name": name,
                "project": project,
                "framework": framework,
                "artifact_sha256": sha,
                "filename": path.name,
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def code(self, source: str, filename: str = "preprocess.py") -> dict[str, Any]:
        data = source.encode()
        return {"sha256": self.upload(data), "filename": filename, "kind": "file"}

    def endpoint(self, service: str = "default", **spec: Any) -> dict[str, Any]:
        response = self.http.post(f"/api/services/{service}/endpoints", json=spec)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def patch(self, key: str, service: str = "default", **spec: Any) -> dict[str, Any]:
        response = self.http.patch(f"/api/services/{service}/endpoints/{key}", json=spec)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def remove(self, key: str, service: str = "default") -> None:
        response = self.http.delete(f"/api/services/{service}/endpoints/{key}")
        assert response.status_code == 204, response.text


def train_sklearn(path: Path, seed: int = 0) -> LogisticRegression:
    """A two-feature logistic regression saved with joblib at ``path``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(100, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, path)
    return model


def wait_for(fn: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call ``fn`` until it returns a truthy value; that value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")


def status_of(url: str, key: str) -> dict[str, Any] | None:
    for entry in httpx.get(f"{url}/status").json()["endpoints"]:
        if entry["key"] == key:
            return dict(entry)
    return None


PREPROCESS_XY = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"y": data.tolist(), "code": "TAG"}
"""
