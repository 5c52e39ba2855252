"""TensorFlow: SavedModel folders (``tf.saved_model.save`` / ``model.export``) and ``.keras`` files.

A SavedModel arrives as a folder artifact (a gzipped tar, unpacked once next to the
blob) or a zip; it is called through its ``serving_default`` signature (option
``signature`` picks another). A ``.keras`` file is loaded with Keras 3. Inputs: a
dict name → array, or one array for a single-input model, cast to the dtype the
model declares; outputs: a dict name → numpy array (SavedModel) or the array(s)
the Keras model returns. ``options.device``: ``cpu`` (default) or ``gpu``/``cuda``.
Installed with the optional extra ``modelyard[tensorflow]`` (tensorflow-cpu).
"""

from __future__ import annotations

import shutil
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.engines._common import import_framework, load_failed, model_suffix, rejected, require_file
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import InvalidInput, ModelLoadError

_UNPACK_LOCK = threading.Lock()


def _unpacked(path: Path) -> Path:
    """A SavedModel folder from ``path``: the folder itself, or a tar/zip unpacked beside it once."""
    if path.is_dir():
        return path
    target = path.with_name(path.name + ".d")
    with _UNPACK_LOCK:
        if not target.exists():
            tmp = path.with_name(path.name + ".d.part")
            shutil.rmtree(tmp, ignore_errors=True)
            if tarfile.is_tarfile(path):
                with tarfile.open(path) as tf:
                    tf.extractall(tmp, filter="data")
            elif zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    zf.extractall(tmp)
            else:
                raise ModelLoadError(
                    f"{path.name} is neither a SavedModel folder (tar/zip) nor a .keras file"
                )
            tmp.rename(target)
    found = [p.parent for p in target.rglob("saved_model.pb")]
    if not found:
        raise ModelLoadError(f"{path.name} holds no saved_model.pb")
    return min(found, key=lambda p: len(p.parts))


class TensorFlowEngine(Engine):
    name: ClassVar[str] = "tensorflow"
    batchable: ClassVar[bool] = True
    _tf: Any = None
    _signature: Any = None
    _keras: Any = None

    def load(self) -> None:
        tf = import_framework("tensorflow", self.name)
        self._tf = tf
        path = require_file(self)
        device = str(self.config.options.get("device", "cpu")).lower()
        self._device = "/GPU:0" if device.startswith(("gpu", "cuda")) else "/CPU:0"
        try:
            if model_suffix(self) == ".keras" or (
                path.is_file() and zipfile.is_zipfile(path) and _is_keras(path)
            ):
                self._load_keras(path)
            else:
                loaded = tf.saved_model.load(str(_unpacked(path)))
                name = str(self.config.options.get("signature", "serving_default"))
                if name not in loaded.signatures:
                    raise ModelLoadError(
                        f"SavedModel has no signature {name!r} (signatures: {', '.join(loaded.signatures)})"
                    )
                self.model = loaded
                self._signature = loaded.signatures[name]
                specs = self._signature.structured_input_signature[1]
                self._specs = {k: (v.dtype.as_numpy_dtype, v.shape) for k, v in specs.items()}
                self._out_specs = dict(self._signature.structured_outputs)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise load_failed(self, exc, "tensorflow") from exc

    def _load_keras(self, path: Path) -> None:
        import keras

        if path.suffix != ".keras":  # Keras insists on the extension; blobs keep the upload name
            link = path.with_name(path.name + ".keras")
            if not link.exists():
                shutil.copyfile(path, link)
            path = link
        model = keras.models.load_model(str(path), compile=False)
        self.model = self._keras = model
        self._specs = {t.name: (np.dtype(t.dtype), t.shape) for t in model.inputs}
        self._out_specs = {t.name: t for t in model.outputs}

    def _feed(self, data: Any) -> dict[str, Any]:
        names = list(self._specs)
        if isinstance(data, dict):
            if len(data) == 1 and len(names) == 1:
                data = {names[0]: next(iter(data.values()))}
            missing = [n for n in names if n not in data]
            if missing:
                raise InvalidInput(
                    f"tensorflow model input {missing[0]!r} is missing (inputs: {', '.join(names)})"
                )
        elif len(names) == 1:
            data = {names[0]: data}
        else:
            raise InvalidInput(f"tensorflow model has {len(names)} inputs; send a dict of {', '.join(names)}")
        return {n: np.asarray(data[n]).astype(self._specs[n][0], copy=False) for n in names}

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        tf = self._tf
        try:
            feed = self._feed(data)
            with tf.device(self._device):
                if self._keras is not None:
                    args = list(feed.values())
                    out = self._keras(args[0] if len(args) == 1 else args, training=False)
                else:
                    out = self._signature(**{k: tf.constant(v) for k, v in feed.items()})
        except InvalidInput:
            raise
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise rejected(self, exc) from exc
        return _numpy(out)

    def metadata(self) -> dict[str, Any]:
        from modelyard.serving.oip_tensors import datatype_of

        def spec(name: str, dtype: Any, shape: Any) -> dict[str, Any]:
            dims = [-1 if d is None else int(d) for d in (list(shape) if shape is not None else [])]
            return {"name": name, "datatype": datatype_of(dtype), "shape": dims}

        if not getattr(self, "_specs", None):
            return {}
        outputs = []
        for name, t in self._out_specs.items():
            dtype = getattr(t.dtype, "as_numpy_dtype", t.dtype)
            outputs.append(spec(name, np.dtype(dtype), t.shape))
        return {
            "platform": "tensorflow_savedmodel" if self._keras is None else "tensorflow_keras",
            "inputs": [spec(n, d, s) for n, (d, s) in self._specs.items()],
            "outputs": outputs,
        }

    def unload(self) -> None:
        self.model = self._signature = self._keras = None


def _is_keras(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return "config.json" in zf.namelist() and any(n.endswith(".weights.h5") for n in zf.namelist())


def _numpy(out: Any) -> Any:
    if isinstance(out, dict):
        return {k: _numpy(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return [_numpy(v) for v in out]
    numpy = getattr(out, "numpy", None)
    return numpy() if callable(numpy) else np.asarray(out)
