"""sklearn engine: real iris models in joblib and pickle files."""

from __future__ import annotations

import asyncio
import pickle
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError
from modelyard.preprocess import UserCode


@pytest.fixture(scope="module")
def iris_model() -> tuple[LogisticRegression, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y), x


def test_joblib_predict(tmp_path: Path, iris_model: Any, make_config: Any, collect: Any) -> None:
    model, x = iris_model
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    engine = default_engine_registry().create(make_config("sklearn", "model.joblib"), path)
    engine.load()
    out = asyncio.run(engine.predict(x[:5].tolist(), {}, collect))
    np.testing.assert_array_equal(out, model.predict(x[:5]))
    # a numpy batch straight through predict_sync
    np.testing.assert_array_equal(engine.predict_sync(x, {}, collect), model.predict(x))
    assert engine.metadata()["inputs"][0]["shape"] == [-1, 4]
    engine.unload()
    assert engine.model is None


def test_pickle_predict_proba(tmp_path: Path, iris_model: Any, make_config: Any, collect: Any) -> None:
    model, x = iris_model
    blob = tmp_path / ("b" * 64)  # content-addressed blob, no extension
    blob.write_bytes(pickle.dumps(model))
    cfg = make_config("sklearn", "model.pkl", options={"method": "predict_proba"})
    engine = default_engine_registry().create(cfg, blob)
    engine.load()
    out = engine.predict_sync(x[:3], {}, collect)
    np.testing.assert_allclose(out, model.predict_proba(x[:3]))


def test_bad_input_is_invalid_input(tmp_path: Path, iris_model: Any, make_config: Any, collect: Any) -> None:
    model, _ = iris_model
    path = tmp_path / "m.joblib"
    joblib.dump(model, path)
    engine = default_engine_registry().create(make_config("sklearn", "m.joblib"), path)
    engine.load()
    with pytest.raises(InvalidInput, match="sklearn model rejected the input"):
        engine.predict_sync([[1.0, 2.0]], {}, collect)


def test_corrupt_file(tmp_path: Path, make_config: Any) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"this is not a pickle at all")
    engine = default_engine_registry().create(make_config("sklearn", "model.pkl"), path)
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    assert str(info.value).startswith("cannot load sklearn model from 'model.pkl': ")


def test_wrong_object_and_bad_method(tmp_path: Path, iris_model: Any, make_config: Any) -> None:
    path = tmp_path / "dict.pkl"
    joblib.dump({"not": "a model"}, path)
    engine = default_engine_registry().create(make_config("sklearn", "dict.pkl"), path)
    with pytest.raises(ModelLoadError, match=r"'dict.pkl' holds a dict, which has no predict\(\)"):
        engine.load()
    cfg = make_config("sklearn", "dict.pkl", options={"method": "explode"})
    with pytest.raises(ModelLoadError, match="option method='explode'"):
        default_engine_registry().create(cfg, path).load()


def test_missing_file(make_config: Any, tmp_path: Path) -> None:
    engine = default_engine_registry().create(make_config("sklearn", "m.pkl"), None)
    with pytest.raises(ModelLoadError, match="needs a model file"):
        engine.load()
    engine = default_engine_registry().create(make_config("sklearn", "m.pkl"), tmp_path / "gone")
    with pytest.raises(ModelLoadError, match=r"'m\.pkl' not found"):
        engine.load()


def test_user_load_replaces_model_and_preprocess_flow(
    tmp_path: Path, iris_model: Any, make_config: Any, collect: Any
) -> None:
    """clearml's sklearn example: preprocess builds rows; a user load() may supply the model."""
    model, x = iris_model
    path = tmp_path / "m.joblib"
    joblib.dump(model, path)
    code = tmp_path / "preprocess.py"
    code.write_text(
        textwrap.dedent(
            """
            import joblib

            class Preprocess:
                def load(self, local_file_name):
                    self.loaded_from = local_file_name
                    return joblib.load(local_file_name)

                def preprocess(self, body, state, collect_custom_statistics_fn=None):
                    return [[body["x0"], body["x1"], body["x2"], body["x3"]]]

                def postprocess(self, data, state, collect_custom_statistics_fn=None):
                    return {"y": data.tolist()}
            """
        )
    )
    cfg = make_config("sklearn", "m.joblib")
    uc = UserCode.load(code, cfg)
    engine = default_engine_registry().create(cfg, path, uc)
    engine.load()
    assert uc.instance.loaded_from == str(path)
    assert engine.model is uc.model

    async def flow() -> Any:
        st: dict[str, Any] = {}
        body = dict(zip(["x0", "x1", "x2", "x3"], x[60].tolist(), strict=True))
        d = await uc.run_preprocess(body, st, collect)
        d = await engine.predict(d, st, collect)
        return await uc.run_postprocess(d, st, collect)

    assert asyncio.run(flow()) == {"y": model.predict(x[60:61]).tolist()}
    uc.unload()
