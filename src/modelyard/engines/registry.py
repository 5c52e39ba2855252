"""Engine names → engine classes, resolved lazily.

The registry holds import strings, not classes, so building one costs nothing
and a missing optional framework (xgboost, torch...) fails only the endpoints
that use it, with a :class:`ModelLoadError` saying what to install. There is
no module-level registry: the data plane builds one with
:func:`default_engine_registry` and may register more (tests, plugins).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.engines._common import missing_package_message
from modelyard.engines.base import Engine, EngineNotFound
from modelyard.errors import ModelLoadError

if TYPE_CHECKING:
    from modelyard.config import EndpointConfig
    from modelyard.preprocess import UserCode

BUILTIN_ENGINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sklearn": ("modelyard.engines.sklearn:SklearnEngine", ("sklearn", "joblib")),
    "xgboost": ("modelyard.engines.xgboost:XGBoostEngine", ("xgboost",)),
    "lightgbm": ("modelyard.engines.lightgbm:LightGBMEngine", ("lightgbm",)),
    "onnx": ("modelyard.engines.onnx:OnnxEngine", ("onnxruntime",)),
    "pytorch": ("modelyard.engines.pytorch:PyTorchEngine", ("torch",)),
    "tensorflow": ("modelyard.engines.tensorflow:TensorFlowEngine", ("tensorflow",)),
    "triton": ("modelyard.engines.triton:TritonEngine", ()),
    "custom": ("modelyard.engines.custom:CustomEngine", ()),
    "custom_async": ("modelyard.engines.custom:CustomAsyncEngine", ()),
}
"""name → (``module:Class``, framework packages it needs)."""


@dataclass
class _Entry:
    target: str | type[Engine]
    requires: tuple[str, ...] = ()


class EngineRegistry:
    """Maps engine names to engine classes; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._resolved: dict[str, type[Engine]] = {}

    def register(self, name: str, target: str | type[Engine], requires: tuple[str, ...] = ()) -> None:
        """Add or replace ``name``: a ``"module:Class"`` string (imported on first use) or a class.

        ``requires`` names framework packages checked before importing, for a clear error.
        """
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"engine target {target!r} must look like 'package.module:Class'")
        self._entries[name] = _Entry(target, tuple(requires))
        self._resolved.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def warm(self, name: str) -> None:
        """Import ``name``'s engine class and framework now (a replica does this in the
        background at start, so the first load of that engine does not pay for the import)."""
        self.get(name)
        entry = self._entries.get(name)
        for package in entry.requires if entry is not None else ():
            importlib.import_module(package)

    def get(self, name: str) -> type[Engine]:
        """The engine class for ``name``; :class:`EngineNotFound` or :class:`ModelLoadError`."""
        if name in self._resolved:
            return self._resolved[name]
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise EngineNotFound(f"engine {name!r} is not known (known engines: {known})")
        for package in entry.requires:
            if importlib.util.find_spec(package) is None:
                raise ModelLoadError(missing_package_message(name, package))
        if isinstance(entry.target, str):
            module_name, _, attr = entry.target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                missing = (getattr(exc, "name", None) or "").split(".")[0]
                if missing and not module_name.startswith(missing):
                    raise ModelLoadError(missing_package_message(name, missing)) from exc
                raise ModelLoadError(f"engine {name!r} cannot be imported: {exc}") from exc
            cls = getattr(module, attr, None)
            if cls is None:
                raise ModelLoadError(f"engine {name!r}: {module_name} has no attribute {attr!r}")
        else:
            cls = entry.target
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise ModelLoadError(f"engine {name!r}: {entry.target!r} is not an Engine subclass")
        self._resolved[name] = cls
        return cls

    def create(
        self,
        config: EndpointConfig,
        model_path: Path | None,
        user_code: UserCode | None = None,
    ) -> Engine:
        """A new, not yet loaded engine for ``config.engine`` (cheap; call ``load()`` next)."""
        cls = self.get(config.engine)
        return cls(config, model_path, user_code)


def default_engine_registry() -> EngineRegistry:
    """A fresh registry with the built-in engines."""
    registry = EngineRegistry()
    for name, (target, requires) in BUILTIN_ENGINES.items():
        registry.register(name, target, requires)
    return registry
