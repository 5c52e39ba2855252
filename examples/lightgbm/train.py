"""Train the LightGBM example: a multiclass booster on iris, saved as LightGBM's text model."""

from pathlib import Path

import lightgbm as lgb
from sklearn.datasets import load_iris


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "seed": 0, "num_leaves": 7}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=20)
    path = Path(out_dir) / "lgbm-model.txt"
    booster.save_model(str(path))
    return path


if __name__ == "__main__":
    print(train(Path(".")))
