"""ONNX models through onnxruntime.

One ``InferenceSession`` per endpoint version (sessions are thread-safe, so
concurrent requests share it). ``options.device: cuda`` asks for the CUDA
provider; when onnxruntime has none the session falls back to CPU and logs why.
Inputs: a dict name → array, or one array for a single-input model; each is cast
to the dtype the model declares (JSON numbers arrive as float64/int64).
Outputs: a dict name → array (or python objects for sequence/map outputs).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from modelyard.engines._common import (
    import_framework,
    load_failed,
    rejected,
    require_file,
    user_model,
)
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

ORT_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", np.object_),
}
"""onnxruntime type → (Open Inference Protocol datatype, numpy dtype)."""


def _shape(dims: Any) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (dims or [])]


class OnnxEngine(Engine):
    name: ClassVar[str] = "onnx"
    batchable: ClassVar[bool] = True
    session: Any = None

    def load(self) -> None:
        ort = import_framework("onnxruntime", self.name)
        custom = user_model(self)
        if custom is not None:  # the user's load() built the session itself
            if not hasattr(custom, "get_inputs"):
                raise ModelLoadError(
                    f"engine 'onnx': Preprocess.load returned a {type(custom).__name__}, "
                    "not an onnxruntime InferenceSession"
                )
            self.session = custom
            self.model = custom
            self._describe()
            return
        path = require_file(self)
        device = str(self.config.options.get("device", "cpu")).lower()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning(
                    "endpoint %s asks for device %r but onnxruntime has no CUDA provider; running on CPU",
                    self.config.key,
                    device,
                )
        so = ort.SessionOptions()
        threads = self.config.options.get("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:
            raise load_failed(self, exc, "onnx") from exc
        self.model = self.session
        self._describe()

    def _describe(self) -> None:
        self._inputs = list(self.session.get_inputs())
        self._outputs = list(self.session.get_outputs())
        declared = [t.name for t in self.config.outputs]
        known = {o.name for o in self._outputs}
        self._wanted = [n for n in declared if n in known] or None

    def _feed(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            names = {i.name for i in self._inputs}
            unknown = sorted(set(data) - names)
            if unknown and not (len(data) == 1 and len(self._inputs) == 1):
                raise InvalidInput(
                    f"onnx model has no input {unknown[0]!r} (inputs: {', '.join(sorted(names))})"
                )
            if len(data) == 1 and len(self._inputs) == 1:
                data = {self._inputs[0].name: next(iter(data.values()))}
            missing = [n for n in names if n not in data]
            if missing:
                raise InvalidInput(f"onnx model input {missing[0]!r} is missing")
        elif len(self._inputs) == 1:
            data = {self._inputs[0].name: data}
        else:
            listed = ", ".join(i.name for i in self._inputs)
            raise InvalidInput(f"onnx model has {len(self._inputs)} inputs; send a dict of {listed}")
        feed = {}
        for spec in self._inputs:
            dtype = ORT_TYPES.get(spec.type, (None, None))[1]
            value = data[spec.name]
            if dtype is np.object_:
                feed[spec.name] = np.asarray(value, dtype=object)
            elif dtype is not None:
                feed[spec.name] = np.asarray(value).astype(dtype, copy=False)
            else:
                feed[spec.name] = value
        return feed

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        try:
            feed = self._feed(data)
        except (ValueError, TypeError) as exc:
            raise rejected(self, exc) from exc
        try:
            values = self.session.run(self._wanted, feed)
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail: shape or type mismatch
            raise rejected(self, exc) from exc
        names = self._wanted or [o.name for o in self._outputs]
        return dict(zip(names, values, strict=True))

    def unload(self) -> None:
        self.session = None
        self.model = None

    def metadata(self) -> dict[str, Any]:
        if self.session is None:
            return {}

        def spec(arg: Any) -> dict[str, Any]:
            datatype = ORT_TYPES.get(arg.type, (str(arg.type), None))[0]
            return {"name": arg.name, "datatype": datatype, "shape": _shape(arg.shape)}

        return {
            "platform": "onnxruntime_onnx",
            "inputs": [spec(i) for i in self._inputs],
            "outputs": [spec(o) for o in self._outputs],
        }
