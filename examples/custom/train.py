"""Train the custom example's model: a scikit-learn pipeline (scaler + k-nearest neighbours) on iris."""

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)).fit(x, y)
    path = Path(out_dir) / "custom-model.pkl"
    joblib.dump(model, path)
    return path


if __name__ == "__main__":
    print(train(Path(".")))
