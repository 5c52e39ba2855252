"""XGBoost: a Booster file (``.json``, ``.ubj``, legacy ``.bin``) or a pickled XGBModel.

Booster files are read as bytes, so the format is sniffed from the content, not
from the (content-addressed, extension-less) local file name, and xgboost never
warns about an unknown extension. A Booster predicts through a ``DMatrix``; a
pickled scikit-learn wrapper (``XGBClassifier``...) honours ``options.method``.
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


class XGBoostEngine(Engine):
    name: ClassVar[str] = "xgboost"
    batchable: ClassVar[bool] = True
    _xgb: Any = None
    _booster: Any = None
    _fn: Any = None

    def load(self) -> None:
        xgb = import_framework("xgboost", self.name)
        self._xgb = xgb
        method = str(self.config.options.get("method", "predict"))
        if method not in METHODS:
            raise ModelLoadError(f"engine 'xgboost': option method={method!r} is not one of {METHODS}")
        model = user_model(self)
        if model is None:
            path = require_file(self)
            try:
                if looks_like_pickle(path):
                    model = load_pickle(path)
                else:
                    model = xgb.Booster()
                    model.load_model(bytearray(path.read_bytes()))
            except Exception as exc:
                raise load_failed(self, exc, "xgboost") from exc
        if isinstance(model, xgb.Booster):
            self._booster = model
            self._fn = None
        else:
            fn = getattr(model, method, None)
            if not callable(fn):
                raise ModelLoadError(
                    f"model file {model_name(self)!r} holds a {type(model).__name__}, "
                    f"not an xgboost Booster or model with {method}()"
                )
            self._fn = fn
        self.model = model

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        data = as_array(data)
        try:
            if self._booster is not None:
                if isinstance(data, self._xgb.DMatrix):
                    return self._booster.predict(data)
                names = self._booster.feature_names
                if names is not None and not hasattr(data, "columns"):
                    matrix = self._xgb.DMatrix(data, feature_names=names)
                else:
                    matrix = self._xgb.DMatrix(data)
                return self._booster.predict(matrix)
            return self._fn(data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise rejected(self, exc) from exc

    def unload(self) -> None:
        self.model = self._booster = self._fn = None

    def metadata(self) -> dict[str, Any]:
        booster = self._booster
        if booster is None and self.model is not None and hasattr(self.model, "get_booster"):
            try:
                booster = self.model.get_booster()
            except Exception:
                return {}
        if booster is None:
            return {}
        n = booster.num_features()
        return {
            "platform": "xgboost",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, n]}],
            "outputs": [],
        }
