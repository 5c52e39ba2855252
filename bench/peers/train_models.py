"""Train the two benchmark models with a fixed seed and save them with joblib.

Run by each interpreter that serves them (``python train_models.py OUTDIR``), so every system
unpickles a model made by its own scikit-learn: the same data, seed and hyperparameters, and no
cross-version pickle surprises. Also writes ``samples.json``: one request row per model and the
label the model gives it, which the harness checks every system's answer against.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

SEED = 0


def train(out: Path) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    iris = load_iris()
    lr = LogisticRegression(max_iter=1000, random_state=SEED).fit(iris.data, iris.target)
    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=SEED)
    rf = RandomForestClassifier(n_estimators=50, random_state=SEED).fit(x, y)
    samples = {}
    for name, model, row in (("iris", lr, iris.data[70]), ("rf", rf, x[7])):
        joblib.dump(model, out / f"{name}.joblib")
        row = [round(float(v), 4) for v in row]
        label = int(model.predict(np.asarray([row], dtype=np.float32))[0])
        samples[name] = {"row": row, "label": label}
    (out / "samples.json").write_text(json.dumps(samples))
    return samples


if __name__ == "__main__":
    print(json.dumps(train(Path(sys.argv[1]))))
