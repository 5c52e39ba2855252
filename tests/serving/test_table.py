"""The endpoint table's swap rules, driven with a loader whose loads the test releases one by one."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest

from modelyard.config import EndpointConfig, ServiceConfig
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelLoadError, NotFound, Unavailable
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.table import EndpointTable


class VersionEngine(Engine):
    """Answers with the key of the endpoint version it was loaded for; counts its unloads."""

    name: ClassVar[str] = "version"
    needs_model: ClassVar[bool] = False
    unloaded: ClassVar[list[str]] = []

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        return self.config.key

    def unload(self) -> None:
        VersionEngine.unloaded.append(self.config.key)


class GatedLoader:
    """Each load waits until the test opens its key's gate; ``fail`` makes it raise instead."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()
        self.executor = ThreadPoolExecutor(2)

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def __call__(self, config: EndpointConfig) -> LoadedEndpoint:
        await self.gate(config.key).wait()
        if config.key in self.fail:
            raise ModelLoadError(f"cannot load {config.key}")
        return LoadedEndpoint(config, VersionEngine(config, None), None, self.executor)


def config(revision: int, *keys: str) -> ServiceConfig:
    endpoints = []
    for key in keys:
        endpoint, _, version = key.partition("/")
        endpoints.append(EndpointConfig(endpoint=endpoint, version=version, engine="version"))
    return ServiceConfig(service="s", revision=revision, endpoints=endpoints)


async def answer(table: EndpointTable, endpoint: str, version: str | None = None) -> Any:
    loaded = table.resolve(endpoint, version)
    return await loaded.run({}, {}, lambda _: None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run_async(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A plain test that runs the coroutine ``fn`` on a fresh event loop."""

    @functools.wraps(fn)
    def test() -> None:
        asyncio.run(fn())

    return test


@pytest.fixture(autouse=True)
def _fresh_unloads() -> None:
    VersionEngine.unloaded.clear()


@run_async
async def test_replacing_a_version_in_one_change_never_leaves_the_endpoint_without_an_answer() -> None:
    loader = GatedLoader()
    table = EndpointTable(loader)
    table.apply(config(1, "iris/1"))
    with pytest.raises(Unavailable, match="still loading"):
        table.resolve("iris", None)
    loader.gate("iris/1").set()
    await table.wait_loaded(5)
    assert await answer(table, "iris") == "iris/1"

    # iris/2 replaces iris/1 in one revision (auto-deploy, max_versions=1)
    table.apply(config(2, "iris/2"))
    await settle()
    assert await answer(table, "iris") == "iris/1", "the old version answers until its successor serves"
    with pytest.raises(NotFound):
        table.resolve("iris", "1")  # addressed directly, a removed version is gone at once
    assert table.snapshot()["retiring"] == ["iris/1"]
    assert VersionEngine.unloaded == []

    loader.gate("iris/2").set()
    await table.wait_loaded(5)
    await settle()
    assert await answer(table, "iris") == "iris/2"
    assert table.snapshot()["retiring"] == []
    assert VersionEngine.unloaded == ["iris/1"], "unloaded once its successor served"
    await table.close()


@run_async
async def test_a_new_highest_version_takes_unversioned_traffic_only_once_loaded() -> None:
    loader = GatedLoader()
    loader.gate("m/1").set()
    table = EndpointTable(loader)
    table.apply(config(1, "m/1"))
    await table.wait_loaded(5)
    table.apply(config(2, "m/1", "m/2"))
    await settle()
    assert await answer(table, "m") == "m/1"
    with pytest.raises(Unavailable, match="'m/2' is still loading"):
        table.resolve("m", "2")
    loader.gate("m/2").set()
    await table.wait_loaded(5)
    assert await answer(table, "m") == "m/2"
    assert VersionEngine.unloaded == [], "m/1 is still declared: it stays loaded"
    await table.close()


@run_async
async def test_a_successor_that_fails_to_load_leaves_the_traffic_where_it_was() -> None:
    loader = GatedLoader()
    loader.gate("m/1").set()
    table = EndpointTable(loader)
    table.apply(config(1, "m/1"))
    await table.wait_loaded(5)
    loader.fail.add("m/2")
    loader.gate("m/2").set()
    table.apply(config(2, "m/2"))
    await table.wait_loaded(5)
    assert table.status["m/2"].state == "failed" and "cannot load m/2" in (table.status["m/2"].error or "")
    assert await answer(table, "m") == "m/1", "still served by the version the change removed"
    with pytest.raises(Unavailable, match="failed to load"):
        table.resolve("m", "2")

    # removing the endpoint altogether retires what lingered
    table.apply(config(3))
    await settle()
    with pytest.raises(NotFound):
        table.resolve("m", None)
    await table.close()
    assert VersionEngine.unloaded == ["m/1"]


@run_async
async def test_unchanged_versions_are_not_reloaded() -> None:
    loader = GatedLoader()
    for key in ("a/1", "b/1"):
        loader.gate(key).set()
    table = EndpointTable(loader)
    table.apply(config(1, "a/1", "b/1"))
    await table.wait_loaded(5)
    a, b = table.ready["a/1"], table.ready["b/1"]
    loader.gate("c/1").set()
    table.apply(config(2, "a/1", "b/1", "c/1"))
    await table.wait_loaded(5)
    assert table.ready["a/1"] is a and table.ready["b/1"] is b
    await table.close()
