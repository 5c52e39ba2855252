"""Train the ensemble example: two different models on iris, saved together in one joblib file."""

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    models = {
        "logistic": LogisticRegression(max_iter=500).fit(x, y),
        "forest": RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y),
    }
    path = Path(out_dir) / "ensemble.pkl"
    joblib.dump(models, path)
    return path


if __name__ == "__main__":
    print(train(Path(".")))
