"""LightGBM: a Booster text model file or a pickled LGBMModel (``LGBMClassifier``...).

The text format is read with ``Booster(model_str=...)`` so the local file name
does not matter; a pickled scikit-learn wrapper honours ``options.method``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelyard.engines._common import (
    as_array,
    import_framework,
    load_failed,
    load_pickle,
    looks_like_pickle,
    model_name,
    rejected,
    require_file,
    user_model,
)
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelLoadError

METHODS = ("predict", "predict_proba")


class LightGBMEngine(Engine):
    name: ClassVar[str] = "lightgbm"
    batchable: ClassVar[bool] = True
    _fn: Any = None

    def load(self) -> None:
        lgb = import_framework("lightgbm", self.name)
        method = str(self.config.options.get("method", "predict"))
        if method not in METHODS:
            raise ModelLoadError(f"engine 'lightgbm': option method={method!r} is not one of {METHODS}")
        model = user_model(self)
        if model is None:
            path = require_file(self)
            try:
                if looks_like_pickle(path):
                    model = load_pickle(path)
                else:
                    text = path.read_text(encoding="utf-8")
                    if not text.lstrip().startswith("tree"):
                        raise ValueError("not a LightGBM text model (it must start with 'tree')")
                    model = lgb.Booster(model_str=text)
            except Exception as exc:
                raise load_failed(self, exc, "lightgbm") from exc
        fn = model.predict if isinstance(model, lgb.Booster) else getattr(model, method, None)
        if not callable(fn):
            raise ModelLoadError(
                f"model file {model_name(self)!r} holds a {type(model).__name__}, "
                f"not a LightGBM Booster or model with {method}()"
            )
        self.model = model
        self._fn = fn

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        try:
            return self._fn(as_array(data))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise rejected(self, exc) from exc
        except Exception as exc:  # lightgbm.basic.LightGBMError: wrong feature count...
            if type(exc).__name__ == "LightGBMError":
                raise rejected(self, exc) from exc
            raise

    def unload(self) -> None:
        self.model = self._fn = None

    def metadata(self) -> dict[str, Any]:
        model = self.model
        booster = getattr(model, "booster_", model)
        try:
            n = int(booster.num_feature())
        except Exception:
            return {}
        return {
            "platform": "lightgbm",
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, n]}],
            "outputs": [],
        }
