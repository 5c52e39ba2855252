"""The bare ASGI baseline: the Python ceiling for a JSON-over-HTTP predict on uvicorn.

No framework, no validation beyond what a crash would need, no metrics, no logging: uvicorn (uvloop,
httptools) calls this coroutine, which parses with orjson, runs the same ``predict`` modelyard runs,
and answers. Whatever modelyard adds on top of this is its per-request cost.

    MODELS_DIR=... python baseline_app.py PORT WORKERS
"""

import os
import sys

import joblib
import numpy as np
import orjson
import uvicorn

MODELS = {f"/predict/{m}": joblib.load(f"{os.environ['MODELS_DIR']}/{m}.joblib") for m in ("iris", "rf")}
HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    model = MODELS.get(scope["path"])
    if model is None:
        await send({"type": "http.response.start", "status": 404, "headers": HEADERS})
        return await send({"type": "http.response.body", "body": b"{}"})
    y = model.predict(np.asarray([orjson.loads(body)["x"]]))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps({"y": y.tolist()})})


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(
        "baseline_app:app" if workers > 1 else app,
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
