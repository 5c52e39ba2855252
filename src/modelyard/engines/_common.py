"""Small helpers shared by the framework engines.

Kept out of :mod:`modelyard.engines.base` so the interface stays one screen;
everything here is about turning framework failures into errors a user can act
on (which file, which package, which input) and about input conversion.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import InvalidInput, ModelLoadError, ModelyardError

if TYPE_CHECKING:
    from modelyard.engines.base import Engine

EXTRAS = {
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnxruntime": "onnx",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "sklearn": "",
    "joblib": "",
}
"""Which ``pip install 'modelyard[extra]'`` brings a package (empty: a core dependency)."""


def missing_package_message(engine: str, package: str) -> str:
    extra = EXTRAS.get(package, "")
    how = f"pip install 'modelyard[{extra}]'" if extra else f"pip install {package}"
    return f"engine {engine!r} needs the {package!r} package: {how}"


def import_framework(package: str, engine: str) -> Any:
    """Import a framework lazily; a missing one is a :class:`ModelLoadError` naming the fix."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(missing_package_message(engine, package)) from exc


def model_name(engine: Engine) -> str:
    """The model file as the user knows it: the uploaded file name, else the local name."""
    model = engine.config.model
    if model is not None and model.artifact is not None:
        return model.artifact.filename
    return engine.model_path.name if engine.model_path else "<no model file>"


def model_suffix(engine: Engine) -> str:
    """The file extension (``.json``), from the uploaded name since local blobs may have none."""
    suffix = Path(model_name(engine)).suffix.lower()
    if not suffix and engine.model_path is not None:
        suffix = engine.model_path.suffix.lower()
    return suffix


def require_file(engine: Engine) -> Path:
    """The model file, or a :class:`ModelLoadError` when the endpoint has none."""
    path = engine.model_path
    if path is None:
        raise ModelLoadError(f"engine {engine.name!r} needs a model file; the endpoint has none")
    if not Path(path).exists():
        raise ModelLoadError(f"model file {model_name(engine)!r} not found at {path}")
    return Path(path)


def load_failed(engine: Engine, exc: BaseException, what: str = "") -> ModelLoadError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 300:
        text = text[:297] + "..."
    what = what or engine.name
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return ModelLoadError(f"cannot load {what} model from {model_name(engine)!r}: {reason}")


def user_model(engine: Engine) -> Any:
    """What the user's ``Preprocess.load(local_file_name)`` returned, if it has one.

    clearml-serving calls it for every engine; a non-``None`` result replaces the
    engine's own loading of the file.
    """
    uc = engine.user_code
    if uc is None or not uc.has_load:
        return None
    return uc.load_model(engine.model_path)


def looks_like_pickle(path: Path) -> bool:
    """Pickle protocol >= 2, or a joblib-compressed pickle (zlib/gzip/bz2/xz/lz4 magic)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18", b"ZF"))


def load_pickle(path: Path) -> Any:
    import joblib

    return joblib.load(path)


def as_array(data: Any) -> Any:
    """Lists and tuples become numpy arrays; arrays, DataFrames and other objects pass through."""
    if isinstance(data, (list, tuple)):
        return np.asarray(data)
    if isinstance(data, dict) and len(data) == 1:
        return as_array(next(iter(data.values())))
    return data


def rejected(engine: Engine, exc: Exception) -> ModelyardError:
    """A framework refused the input (shape, dtype, feature count): the client's problem, 4xx."""
    if isinstance(exc, ModelyardError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return InvalidInput(f"{engine.name} model rejected the input: {text}")
