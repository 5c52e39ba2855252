"""Train the XGBoost example: a classifier on iris (4 features), saved in XGBoost's JSON format."""

from pathlib import Path

import xgboost as xgb
from sklearn.datasets import load_iris


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 3, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=20)
    path = Path(out_dir) / "xgb-model.json"
    booster.save_model(str(path))
    return path


if __name__ == "__main__":
    print(train(Path(".")))
