"""The bare ASGI baseline: the Python ceiling for a JSON-over-HTTP predict on uvicorn.

No framework, no validation beyond what a crash would need, no metrics, no logging: uvicorn (uvloop,
httptools) calls this coroutine, which parses with orjson, runs the same ``predict`` modelyard runs,
and answers. Whatever modelyard adds on top of this is its per-request cost.

Two routes: ``POST /predict/<model> {"x": [...]}`` -> ``{"y": [...]}``, and the peers' V2 body on
``POST /v2/models/<model>/infer`` (the one FP64 input's ``data`` reshaped to its ``shape``; one
INT64 output), so the baseline can be measured on the same request as everyone else.

    MODELS_DIR=... python baseline_app.py PORT WORKERS
"""

import os
import sys

import joblib
import numpy as np
import orjson
import uvicorn

LOADED = {m: joblib.load(f"{os.environ['MODELS_DIR']}/{m}.joblib") for m in ("iris", "rf")}
MODELS = {f"/predict/{m}": model for m, model in LOADED.items()}
V2 = {f"/v2/models/{m}/infer": model for m, model in LOADED.items()}
HEADERS = [(b"content-type", b"application/json")]


def v2(model, body: bytes) -> bytes:
    tensor = orjson.loads(body)["inputs"][0]
    y = model.predict(np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"]))
    out = {"name": "y", "shape": list(y.shape), "datatype": "INT64", "data": y.tolist()}
    return orjson.dumps({"model_name": "m", "outputs": [out]})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] in V2:
        answer = v2(V2[scope["path"]], body)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        return await send({"type": "http.response.body", "body": answer})
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
