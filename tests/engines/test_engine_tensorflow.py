"""tensorflow engine on a tiny real Keras model: a .keras file and its exported SavedModel (tar.gz)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from modelyard.engines.registry import default_engine_registry
from modelyard.errors import InvalidInput, ModelLoadError

pytestmark = pytest.mark.slow  # importing TensorFlow takes seconds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    tmp = tmp_path_factory.mktemp("tf")
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), name="x")
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, outputs)
    keras_path = tmp / "tiny.keras"
    model.save(keras_path)
    model.export(str(tmp / "saved"), verbose=False)
    tar_path = tmp / "saved.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp / "saved", arcname="saved")
    return keras_path, tar_path, model


def test_keras_file(tiny: Any, make_config: Any, collect: Any) -> None:
    keras_path, _, model = tiny
    blob = keras_path.with_name("blob")  # content-addressed blobs may lack the extension
    blob.write_bytes(keras_path.read_bytes())
    engine = default_engine_registry().create(make_config("tensorflow", "tiny.keras"), blob)
    engine.load()
    x = np.random.default_rng(0).normal(size=(5, 4))
    out = engine.predict_sync(x.tolist(), {}, collect)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5)
    meta = engine.metadata()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    with pytest.raises(InvalidInput):
        engine.predict_sync([[1.0, 2.0]], {}, collect)
    engine.unload()


def test_saved_model_folder_artifact(tiny: Any, make_config: Any, collect: Any) -> None:
    _, tar_path, model = tiny
    engine = default_engine_registry().create(make_config("tensorflow", "saved.tar.gz"), tar_path)
    engine.load()
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    out = engine.predict_sync({"x": x}, {}, collect)
    (value,) = out.values()
    np.testing.assert_allclose(value, model.predict(x, verbose=0), rtol=1e-5)
    assert engine.metadata()["platform"] == "tensorflow_savedmodel"
    engine.unload()


def test_not_a_model_is_a_load_error(tmp_path: Path, make_config: Any) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"junk")
    engine = default_engine_registry().create(make_config("tensorflow", "junk.bin"), path)
    with pytest.raises(ModelLoadError, match="junk"):
        engine.load()
