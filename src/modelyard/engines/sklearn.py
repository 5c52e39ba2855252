"""scikit-learn: a joblib or pickle file holding an estimator or pipeline.

``options.method`` picks the estimator method (``predict`` by default,
``predict_proba`` for probabilities...). Batchable: estimators take a batch of rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelyard.engines._common import (
    as_array,
    import_framework,
    load_failed,
    load_pickle,
    model_name,
    rejected,
    require_file,
    user_model,
)
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelLoadError

METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")


class SklearnEngine(Engine):
    name: ClassVar[str] = "sklearn"
    batchable: ClassVar[bool] = True
    _fn: Any = None

    def load(self) -> None:
        method = str(self.config.options.get("method", "predict"))
        if method not in METHODS:
            raise ModelLoadError(
                f"engine 'sklearn': option method={method!r} is not one of {', '.join(METHODS)}"
            )
        model = user_model(self)
        if model is None:
            path = require_file(self)
            import_framework("sklearn", self.name)
            try:
                model = load_pickle(path)
            except Exception as exc:
                raise load_failed(self, exc, "sklearn") from exc
        fn = getattr(model, method, None)
        if not callable(fn):
            raise ModelLoadError(
                f"model file {model_name(self)!r} holds a {type(model).__name__}, "
                f"which has no {method}() method"
            )
        self.model = model
        self._fn = fn

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        try:
            return self._fn(as_array(data))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise rejected(self, exc) from exc

    def unload(self) -> None:
        self.model = None
        self._fn = None

    def metadata(self) -> dict[str, Any]:
        n = getattr(self.model, "n_features_in_", None)
        if not isinstance(n, int):
            return {}
        return {
            "platform": "sklearn",
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, n]}],
            "outputs": [],
        }
