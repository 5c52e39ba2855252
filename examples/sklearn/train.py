"""Train the sklearn example: a LogisticRegression on two features, saved with joblib."""

from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression


def train(out_dir: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    path = Path(out_dir) / "sklearn-model.pkl"
    joblib.dump(model, path)
    return path


if __name__ == "__main__":
    print(train(Path(".")))
