"""8x8 digit images in; the digit and its probabilities out, for the PyTorch example.

``body`` is ``{"image": [[...8 rows of 8...]]}`` (a list of images, or one image) over ``/serve``,
the one input ``image`` as a numpy array ``(N, 8, 8)`` over ``/v2`` (Open Inference Protocol), and
the request body ``{"instances": [image, ...]}`` over ``/v1`` (KServe V1). Pixels are intensities
0..16, as in scikit-learn's digits; the model takes them scaled to [0, 1], one channel.
"""

from typing import Any

import numpy as np


def images(body: Any) -> np.ndarray:
    """The request's images as the model takes them: float32 ``(N, 1, 8, 8)`` in [0, 1]."""
    if isinstance(body, dict):  # /serve's {"image": ...} or KServe V1's {"instances": ...}
        if "image" not in body and "instances" not in body:
            raise ValueError('body must be {"image": [[8 rows of 8 pixels 0..16], ...]}')
        body = body.get("image", body.get("instances"))
    pixels = np.asarray(body, dtype=np.float32)
    if pixels.size == 0 or pixels.size % 64:
        raise ValueError(f"each image is 8x8 pixels (64 values); got {pixels.size} values")
    return pixels.reshape(-1, 1, 8, 8) / 16.0


class Preprocess:
    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        return images(body)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # data: the (N, 10) logits the exported network returned, as a numpy array
        logits = np.asarray(data, dtype=np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return {
            "digit": probabilities.argmax(axis=1).tolist(),
            "probabilities": probabilities.round(4).tolist(),
        }
