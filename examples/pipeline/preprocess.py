"""A pipeline endpoint (threaded): fan one request out to two other endpoints and merge the answers.

``self.send_request`` is injected by modelyard: it calls another endpoint of the same service in-process
and returns what that endpoint would answer over HTTP.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Preprocess:
    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=2)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        sklearn = self._pool.submit(
            self.send_request,
            endpoint="test_model_sklearn",
            version="1",
            data={"x0": data["x0"], "x1": data["x1"]},
        )
        lgbm = self._pool.submit(self.send_request, endpoint="test_model_lgbm", version="1", data=data)
        return {"sklearn": sklearn.result()["y"], "lightgbm": lgbm.result()["y"]}

    def unload(self) -> None:
        self._pool.shutdown(wait=False)
