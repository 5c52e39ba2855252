"""PyTorch: TorchScript archives (``torch.jit.save``) and ``torch.export`` programs (``.pt2``).

The two formats are told apart by the zip members, not the file name (local
files are content-addressed). ``options.device`` picks the device (default
``cpu``); asking for ``cuda`` where CUDA is not available is a load error, not a
silent CPU fallback. Inputs (numpy, lists; a dict for keyword inputs, a tuple
for several positional ones) become tensors (float64 → float32 unless the
endpoint declares a dtype); outputs come back as numpy arrays. torch is
imported only when such an endpoint loads: it is big and slow to import.
"""

from __future__ import annotations

import inspect
import zipfile
from typing import Any, ClassVar

import numpy as np

from modelyard.engines._common import (
    import_framework,
    load_failed,
    model_name,
    rejected,
    require_file,
    user_model,
)
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import InvalidInput, ModelLoadError


def archive_kind(path: Any) -> str:
    """``export``, ``torchscript`` or ``checkpoint`` from the zip's member names."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.endswith("archive_format") for n in names):
        return "export"
    if any(n.endswith("constants.pkl") for n in names) or any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "checkpoint"
    return "unknown"


class PyTorchEngine(Engine):
    name: ClassVar[str] = "pytorch"
    batchable: ClassVar[bool] = True
    _torch: Any = None
    _fn: Any = None
    device: Any = None
    _arg_names: list[str] | None = None

    def load(self) -> None:
        torch = import_framework("torch", self.name)
        self._torch = torch
        wanted = str(self.config.options.get("device", "cpu")).lower()
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(
                f"endpoint {self.config.key!r} asks for device {wanted!r}, "
                "but CUDA is not available on this replica (torch.cuda.is_available() is False)"
            )
        try:
            self.device = torch.device(wanted)
        except RuntimeError as exc:
            raise ModelLoadError(f"engine 'pytorch': option device={wanted!r}: {exc}") from exc
        model = user_model(self)
        if model is None:
            model = self._load_file(torch)
        elif hasattr(model, "to"):
            model = model.to(self.device)
        if hasattr(model, "eval") and not isinstance(model, torch.export.ExportedProgram):
            model.eval()
        self.model = model
        self._fn = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        if not callable(self._fn):
            raise ModelLoadError(f"engine 'pytorch': the model is a {type(model).__name__}, not callable")
        self._arg_names = None
        if isinstance(model, torch.export.ExportedProgram):
            self._arg_names = self._positional_names(model)

    def _positional_names(self, program: Any) -> list[str]:
        """Which named inputs an exported program takes positionally (the rest are keywords).

        Exported modules insist on the call shape they were exported with, so a dict
        request is split the same way (``example_inputs`` keeps that split).
        """
        try:
            names = list(inspect.signature(self._fn.forward).parameters)
        except (TypeError, ValueError):
            names = list(program.graph_signature.user_inputs)
        example = getattr(program, "example_inputs", None)
        if example and isinstance(example, tuple) and len(example) == 2:
            return names[: len(example[0])]
        return names

    def _load_file(self, torch: Any) -> Any:
        path = require_file(self)
        try:
            kind = archive_kind(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(
                f"cannot load pytorch model from {model_name(self)!r}: not a TorchScript or "
                f"torch.export archive ({exc})"
            ) from exc
        if kind == "checkpoint":
            raise ModelLoadError(
                f"cannot load pytorch model from {model_name(self)!r}: it is a torch.save() "
                "checkpoint (pickled module or state_dict); save it with torch.jit.save or "
                "torch.export.save instead"
            )
        if kind == "unknown":
            raise ModelLoadError(
                f"cannot load pytorch model from {model_name(self)!r}: "
                "a zip file, but not a TorchScript or torch.export archive"
            )
        try:
            if kind == "export":
                with open(path, "rb") as f:  # a file object: export.load wants '.pt2' names
                    program = torch.export.load(f)
                if self.device.type != "cpu":
                    program = torch.export.passes.move_to_device_pass(program, self.device)
                return program
            return torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:
            raise load_failed(self, exc, "pytorch") from exc

    def _tensor(self, value: Any, dtype: str | None) -> Any:
        torch = self._torch
        if isinstance(value, torch.Tensor):
            return value.to(self.device)
        arr = np.asarray(value)
        if dtype:
            arr = arr.astype(np.dtype(dtype), copy=False)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.dtype.kind in "OUSV":
            raise InvalidInput(f"pytorch model input must be numeric, got {arr.dtype} data")
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

    def _declared(self, name: str | None, index: int) -> str | None:
        specs = self.config.inputs
        if name is not None:
            return next((s.dtype for s in specs if s.name == name), None)
        return specs[index].dtype if index < len(specs) else None

    def _to_numpy(self, out: Any) -> Any:
        torch = self._torch
        if isinstance(out, torch.Tensor):
            return out.detach().cpu().numpy()
        if isinstance(out, dict):
            return {k: self._to_numpy(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return [self._to_numpy(v) for v in out]
        return out

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        torch = self._torch
        try:
            with torch.inference_mode():
                if isinstance(data, dict):
                    kwargs = {k: self._tensor(v, self._declared(k, 0)) for k, v in data.items()}
                    args = []
                    for name in self._arg_names or []:
                        if name not in kwargs:
                            raise InvalidInput(f"pytorch model input {name!r} is missing")
                        args.append(kwargs.pop(name))
                    out = self._fn(*args, **kwargs)
                elif isinstance(data, tuple):
                    out = self._fn(*(self._tensor(v, self._declared(None, i)) for i, v in enumerate(data)))
                else:
                    out = self._fn(self._tensor(data, self._declared(None, 0)))
        except torch.cuda.OutOfMemoryError:
            raise
        except (ValueError, TypeError, IndexError, RuntimeError, AssertionError) as exc:
            raise rejected(self, exc) from exc
        return self._to_numpy(out)

    def unload(self) -> None:
        self.model = self._fn = None
        if self.device is not None and self.device.type == "cuda":
            self._torch.cuda.empty_cache()
