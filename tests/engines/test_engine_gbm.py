"""xgboost and lightgbm engines: tiny real models in each native format and pickled."""

from __future__ import annotations

import asyncio
import pickle
import shutil
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def booster(data: Any) -> xgb.Booster:
    x, y = data
    params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1}
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=5)


@pytest.mark.parametrize("ext", ["json", "ubj"])
@pytest.mark.parametrize("blob", [False, True], ids=["named", "blob"])
def test_xgboost_booster_formats(
    tmp_path: Path, data: Any, booster: Any, make_config: Any, collect: Any, ext: str, blob: bool
) -> None:
    x, _ = data
    path = tmp_path / f"model.{ext}"
    booster.save_model(path)
    if blob:  # the artifact cache keeps files under their sha256, without extension
        path = Path(shutil.move(path, tmp_path / ("c" * 64)))
    engine = default_engine_registry().create(make_config("xgboost", f"model.{ext}"), path)
    engine.load()
    expected = booster.predict(xgb.DMatrix(x[:10]))
    np.testing.assert_allclose(asyncio.run(engine.predict(x[:10].tolist(), {}, collect)), expected)
    np.testing.assert_allclose(engine.predict_sync(x[:10], {}, collect), expected)
    assert engine.metadata()["inputs"][0]["shape"] == [-1, 4]
    with pytest.raises(InvalidInput, match="xgboost model rejected the input"):
        engine.predict_sync(np.ones((2, 7)), {}, collect)
    engine.unload()


def test_xgboost_named_features(tmp_path: Path, data: Any, make_config: Any, collect: Any) -> None:
    x, y = data
    names = ["a", "b", "c", "d"]
    params = {"objective": "reg:squarederror", "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=names), 3)
    path = tmp_path / "m.json"
    booster.save_model(path)
    engine = default_engine_registry().create(make_config("xgboost", "m.json"), path)
    engine.load()
    expected = booster.predict(xgb.DMatrix(x[:4], feature_names=names))
    np.testing.assert_allclose(engine.predict_sync(x[:4], {}, collect), expected)


def test_xgboost_pickled_sklearn_model(tmp_path: Path, data: Any, make_config: Any, collect: Any) -> None:
    x, y = data
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    path = tmp_path / "clf.pkl"
    joblib.dump(clf, path)
    cfg = make_config("xgboost", "clf.pkl", options={"method": "predict_proba"})
    engine = default_engine_registry().create(cfg, path)
    engine.load()
    np.testing.assert_allclose(engine.predict_sync(x[:5], {}, collect), clf.predict_proba(x[:5]))
    plain = default_engine_registry().create(make_config("xgboost", "clf.pkl"), path)
    plain.load()
    np.testing.assert_array_equal(plain.predict_sync(x[:5], {}, collect), clf.predict(x[:5]))


@pytest.mark.parametrize("content", [b"garbage data here", b"{not json", b"\x80\x04garbage"])
def test_xgboost_corrupt(tmp_path: Path, make_config: Any, content: bytes) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(content)
    engine = default_engine_registry().create(make_config("xgboost", "model.json"), path)
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    msg = str(info.value)
    assert msg.startswith("cannot load xgboost model from 'model.json': ")
    assert "\n" not in msg


def test_xgboost_wrong_framework(tmp_path: Path, make_config: Any) -> None:
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    engine = default_engine_registry().create(make_config("xgboost", "list.pkl"), path)
    with pytest.raises(ModelLoadError, match="holds a list, not an xgboost Booster"):
        engine.load()


def test_lightgbm_booster_text(tmp_path: Path, data: Any, make_config: Any, collect: Any) -> None:
    x, y = data
    params = {"objective": "binary", "num_threads": 1, "verbose": -1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=5)
    path = tmp_path / ("d" * 64)
    booster.save_model(str(path))
    engine = default_engine_registry().create(make_config("lightgbm", "model.txt"), path)
    engine.load()
    expected = booster.predict(x[:10])
    np.testing.assert_allclose(asyncio.run(engine.predict(x[:10].tolist(), {}, collect)), expected)
    assert engine.metadata()["inputs"][0]["shape"] == [-1, 4]
    with pytest.raises(InvalidInput, match="lightgbm model rejected the input"):
        engine.predict_sync(np.ones((2, 9)), {}, collect)


def test_lightgbm_pickled_classifier(tmp_path: Path, data: Any, make_config: Any, collect: Any) -> None:
    x, y = data
    clf = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, n_jobs=1, verbose=-1).fit(x, y)
    path = tmp_path / "clf.joblib"
    joblib.dump(clf, path)
    cfg = make_config("lightgbm", "clf.joblib", options={"method": "predict_proba"})
    engine = default_engine_registry().create(cfg, path)
    engine.load()
    np.testing.assert_allclose(engine.predict_sync(x[:5], {}, collect), clf.predict_proba(x[:5]))


@pytest.mark.parametrize("content", [b"hello world", b"tree\nversion=v4\ngarbage=1\n", b"\xff\xfe"])
def test_lightgbm_corrupt(tmp_path: Path, make_config: Any, content: bytes) -> None:
    path = tmp_path / "model.txt"
    path.write_bytes(content)
    engine = default_engine_registry().create(make_config("lightgbm", "model.txt"), path)
    with pytest.raises(ModelLoadError, match=r"^cannot load lightgbm model from 'model\.txt': "):
        engine.load()
