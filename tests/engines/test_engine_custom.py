"""custom / custom_async engines: the user's process() is the model."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import ModelLoadError, Unprocessable
from modelyard.preprocess import UserCode

CUSTOM = """
    import joblib
    import numpy as np

    class Preprocess:
        def __init__(self):
            self._model = None

        def load(self, local_file_name):
            self._model = joblib.load(local_file_name)
            return self._model

        def preprocess(self, body, state, collect_custom_statistics_fn=None):
            return np.array(body["x"], dtype=float)

        def process(self, data, state, collect_custom_statistics_fn=None):
            if data.ndim != 2:
                raise ValueError("x must be a matrix")
            collect_custom_statistics_fn({"rows": len(data)})
            return self._model.predict(data)
"""

ASYNC = """
    import asyncio

    class Preprocess:
        def load(self, local_file_name):
            return {"scale": 3}

        async def process(self, data, state, collect_custom_statistics_fn=None):
            await asyncio.sleep(0)
            return [v * self._model["scale"] for v in data]
"""


def _code(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "custom.py"
    p.write_text(textwrap.dedent(text))
    return p


def test_custom_with_model_file(tmp_path: Path, make_config: Any, collect: Any, collected: list) -> None:
    x = np.arange(20, dtype=float).reshape(10, 2)
    model = LinearRegression().fit(x, x[:, 0] * 2 + x[:, 1])
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    cfg = make_config("custom", "model.joblib")
    uc = UserCode.load(_code(tmp_path, CUSTOM), cfg)
    engine = default_engine_registry().create(cfg, path, uc)
    assert engine.needs_model is False
    engine.load()
    assert engine.model is uc.instance._model
    assert engine.runs_sync()  # a sync process() can share the worker hop

    async def flow() -> Any:
        st: dict[str, Any] = {}
        data = await uc.run_preprocess({"x": [[1, 2], [3, 4]]}, st, collect)
        return await engine.predict(data, st, collect)

    np.testing.assert_allclose(asyncio.run(flow()), model.predict(np.array([[1, 2], [3, 4]])))
    assert collected == [{"rows": 2}]
    with pytest.raises(Unprocessable, match="process raised ValueError: x must be a matrix"):
        asyncio.run(engine.predict(np.array([1.0]), {}, collect))
    with pytest.raises(Unprocessable, match="process raised ValueError"):
        engine.predict_sync(np.array([1.0]), {}, collect)
    engine.unload()
    uc.unload()


def test_custom_async_without_model_file(tmp_path: Path, make_config: Any, collect: Any) -> None:
    cfg = make_config("custom_async")
    uc = UserCode.load(_code(tmp_path, ASYNC), cfg)
    engine = default_engine_registry().create(cfg, None, uc)
    engine.load()
    assert engine.model == {"scale": 3}
    assert not engine.runs_sync()
    assert asyncio.run(engine.predict([1, 2], {}, collect)) == [3, 6]
    with pytest.raises(RuntimeError, match="async"):
        engine.predict_sync([1], {}, collect)
    uc.unload()


def test_custom_needs_process(tmp_path: Path, make_config: Any) -> None:
    cfg = make_config("custom")
    with pytest.raises(ModelLoadError, match="needs preprocess code whose Preprocess class defines process"):
        default_engine_registry().create(cfg, None, None).load()
    uc = UserCode.load(_code(tmp_path, "class Preprocess:\n    pass\n"), cfg)
    with pytest.raises(ModelLoadError, match="defines process"):
        default_engine_registry().create(cfg, None, uc).load()
    uc.unload()
