"""EngineRegistry: lazy resolution, clear errors for unknown engines and missing packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from modelyard.engines.base import CollectFn, Engine, EngineNotFound
from modelyard.engines.registry import EngineRegistry, default_engine_registry
from modelyard.errors import ModelLoadError


class EchoEngine(Engine):
    name: ClassVar[str] = "echo"
    needs_model: ClassVar[bool] = False

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        return data


def test_default_names_and_resolution(make_config: Any) -> None:
    reg = default_engine_registry()
    assert set(reg.names()) >= {
        "sklearn",
        "xgboost",
        "lightgbm",
        "onnx",
        "pytorch",
        "custom",
        "custom_async",
    }
    assert "sklearn" in reg
    cls = reg.get("sklearn")
    assert cls.name == "sklearn" and cls.batchable
    assert reg.get("custom").needs_model is False
    assert reg.get("custom_async").name == "custom_async"
    engine = reg.create(make_config("sklearn", "m.pkl"), Path("/nonexistent/m.pkl"))
    assert engine.model is None  # create does no I/O
    # registries do not share state
    other = default_engine_registry()
    other.register("echo", EchoEngine)
    assert "echo" in other and "echo" not in reg


def test_unknown_engine(make_config: Any) -> None:
    reg = default_engine_registry()
    with pytest.raises(EngineNotFound, match=r"engine 'nope' is not known \(known engines: .*sklearn"):
        reg.create(make_config("nope"), None)


def test_register_class_and_string(make_config: Any) -> None:
    reg = EngineRegistry()
    reg.register("echo", EchoEngine)
    reg.register("echo2", f"{__name__}:EchoEngine")
    assert reg.names() == ["echo", "echo2"]
    engine = reg.create(make_config("echo2"), None)
    assert isinstance(engine, EchoEngine)
    with pytest.raises(ValueError, match="module:Class"):
        reg.register("bad", "no_colon_here")


def test_missing_package_is_clear(make_config: Any) -> None:
    reg = EngineRegistry()
    reg.register("fancy", f"{__name__}:EchoEngine", requires=("no_such_framework_pkg",))
    with pytest.raises(ModelLoadError, match="engine 'fancy' needs the 'no_such_framework_pkg'"):
        reg.create(make_config("fancy"), None)
    reg.register("broken", "modelyard_no_such_module:Engine")
    with pytest.raises(ModelLoadError, match="engine 'broken' cannot be imported: No module named"):
        reg.get("broken")
    reg.register("noattr", f"{__name__}:Missing")
    with pytest.raises(ModelLoadError, match="has no attribute 'Missing'"):
        reg.get("noattr")
    reg.register("notengine", f"{__name__}:test_unknown_engine")
    with pytest.raises(ModelLoadError, match="not an Engine subclass"):
        reg.get("notengine")


def test_missing_xgboost_message_names_extra(monkeypatch: pytest.MonkeyPatch, make_config: Any) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *a: Any, **kw: Any) -> Any:
        return None if name == "xgboost" else real(name, *a, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    reg = default_engine_registry()
    with pytest.raises(ModelLoadError) as info:
        reg.create(make_config("xgboost", "m.json"), Path("m.json"))
    assert str(info.value) == (
        "engine 'xgboost' needs the 'xgboost' package: pip install 'modelyard[xgboost]'"
    )
