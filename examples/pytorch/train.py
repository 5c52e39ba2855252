"""Train the PyTorch example: a small CNN on scikit-learn's digits (8x8 images), saved with ``torch.export``.

The images come with scikit-learn (no download); a quarter is held out to measure the model
(about 97 % correct). The ``.pt2`` archive is an exported program: the ``pytorch`` engine loads it
with ``torch.export.load``, without this file's ``Net`` class.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class Net(nn.Module):
    """(N, 1, 8, 8) pixels in [0, 1] -> (N, 10) logits, one per digit."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, kernel_size=3), nn.ReLU(), nn.Flatten())
        self.classify = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out images (8x8, pixel intensities 0..16 as in the dataset) and their digits."""
    digits = load_digits()
    return train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )


def train(out_dir: Path) -> Path:
    images, _, digits, _ = split()
    x = torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)  # what preprocess.py sends
    y = torch.from_numpy(digits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on a busy pool
    try:
        torch.manual_seed(0)
        model = Net()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(40):  # full-batch steps: well under a second on a CPU
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        # the batch size stays free: the server stacks as many images as a request holds
        program = torch.export.export(
            model, (x[:2].clone(),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
    finally:
        torch.set_num_threads(threads)
    path = Path(out_dir) / "digits-cnn.pt2"
    torch.export.save(program, path)
    return path


if __name__ == "__main__":
    path = train(Path("."))
    _, images, _, digits = split()
    program = torch.export.load(path).module()
    x = torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)
    accuracy = (program(x).argmax(dim=1).numpy() == digits).mean()
    print(f"{path} (held-out accuracy {accuracy:.1%})")
