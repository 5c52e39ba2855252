"""Train the TensorFlow example: a Keras network on scikit-learn's diabetes data, exported as a SavedModel.

Ten baseline measurements of a patient (age, sex, body mass index, blood pressure and six blood
serum values, in their raw units) predict a measure of the disease's progression one year later.
The data comes with scikit-learn (no download); a quarter is held out. The network standardises
its inputs itself (a ``Normalization`` layer adapted to the training rows), and ``model.export``
writes a SavedModel folder with a ``serving_default`` signature: the format TensorFlow Serving and
Triton load, and the one the ``tensorflow`` engine calls (upload the folder).
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out rows of the 10 measurements (``FEATURES``), and their progression."""
    x, y = load_diabetes(return_X_y=True, scaled=False)
    return train_test_split(x.astype(np.float32), y.astype(np.float32), test_size=0.25, random_state=0)


def train(out_dir: Path) -> Path:
    import keras  # with TensorFlow: a few seconds to import, so only when training
    import tensorflow as tf

    x, _, y, _ = split()
    keras.utils.set_random_seed(0)
    normalise = keras.layers.Normalization()
    normalise.adapt(x)
    measurements = keras.Input(shape=(len(FEATURES),), name="measurements")
    hidden = keras.layers.Dense(16, activation="relu")(normalise(measurements))
    model = keras.Model(measurements, keras.layers.Dense(1, name="progression")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    # 500 full-batch steps in one epoch: Keras' per-epoch overhead would dominate otherwise
    steps = tf.data.Dataset.from_tensors((x, y)).repeat(500)
    model.fit(steps, epochs=1, verbose=0, shuffle=False)
    path = Path(out_dir) / "diabetes-savedmodel"
    model.export(str(path), verbose=False)
    return path


if __name__ == "__main__":
    import tensorflow as tf

    path = train(Path("."))
    _, x, _, y = split()
    predict = tf.saved_model.load(str(path)).signatures["serving_default"]
    predicted = predict(measurements=tf.constant(x))["output_0"].numpy()[:, 0]
    r2 = 1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    print(f"{path} (held-out R² {r2:.2f}; predicting the mean scores 0)")
