"""A pipeline endpoint (asyncio): the same fan-out as preprocess.py with ``async_send_request``."""

import asyncio
from typing import Any


class Preprocess:
    async def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        sklearn, lgbm = await asyncio.gather(
            self.async_send_request(
                "test_model_sklearn", version="1", data={"x0": data["x0"], "x1": data["x1"]}
            ),
            self.async_send_request("test_model_lgbm", version="1", data=data),
        )
        return {"sklearn": sklearn["y"], "lightgbm": lgbm["y"]}
