"""Fixtures for the engine and user-code tests: endpoint configs and a statistics collector."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from modelyard.config import ArtifactRef, EndpointConfig, ModelRef


def _make_config(
    engine: str,
    filename: str | None = None,
    endpoint: str = "ep",
    version: str = "1",
    **kw: Any,
) -> EndpointConfig:
    model = None
    if filename is not None:
        model = ModelRef(
            id="m1",
            name="model",
            project="tests",
            version=1,
            framework=engine,
            artifact=ArtifactRef(sha256="0" * 64, filename=filename),
        )
    return EndpointConfig(endpoint=endpoint, version=version, engine=engine, model=model, **kw)


@pytest.fixture
def make_config() -> Callable[..., EndpointConfig]:
    """``make_config("sklearn", "model.pkl", options={...})``: an endpoint version config."""
    return _make_config


@pytest.fixture
def collected() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def collect(collected: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """A ``collect_custom_statistics_fn`` that records into ``collected``."""
    return collected.append


def predict_then_unload(engine: Any, data: Any, collect: Any) -> Any:
    """One ``predict`` of an async remote engine on a fresh loop, then ``unload`` on that loop
    (which closes its connection pool or channel there)."""

    async def run() -> Any:
        try:
            return await engine.predict(data, {}, collect)
        finally:
            engine.unload()
            await asyncio.sleep(0.05)

    return asyncio.run(run())
