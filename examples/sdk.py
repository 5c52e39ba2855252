"""The Python SDK in one script: upload a model, serve it, call it, change it, clean up.

Start a server first (``make serve`` or ``modelyard serve``), then::

    python examples/sdk.py

Like the CLI, the client finds the server at ``MODELYARD_URL`` (default
``http://127.0.0.1:8080``) and its token at ``MODELYARD_TOKEN`` or ``$MODELYARD_HOME/token``.
Every call raises the :mod:`modelyard.errors` exception of what went wrong (``NotFound``,
``Unavailable``...), with the server's message.
"""

from __future__ import annotations

import runpy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard import Client, errors

HERE = Path(__file__).resolve().parent


def infer_when_loaded(
    client: Client, endpoint: str, body: Any, done: Callable[[Any], bool] = bool, timeout_s: float = 30
) -> Any:
    """Call ``endpoint`` until it answers, and ``done(answer)``: the replicas load a changed version
    in the background, and the old one answers until then."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = client.infer(endpoint, body)
            if done(answer):
                return answer
        except (errors.Unavailable, errors.NotFound):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{endpoint} did not answer as expected within {timeout_s:g} s")
        time.sleep(0.1)


def wait_until_loaded(client: Client, service: str, key: str, timeout_s: float = 60) -> dict[str, str]:
    """What ``modelyard endpoint add --wait`` does: follow the replicas' status reports until each
    live replica has ``key`` ready (or failed: raise with its reason). Replica id -> state."""
    revision = client.status(service)["revision"]  # the replicas must have applied our change
    deadline = time.monotonic() + timeout_s
    while True:
        states = {}
        for replica in client.status(service)["replicas"]:
            entry = next((e for e in replica["endpoints"] if e["key"] == key), None)
            if replica["revision"] >= revision and entry is not None:
                if entry["state"] == "failed":
                    raise RuntimeError(f"{key} failed to load on {replica['id']}: {entry.get('error')}")
                states[replica["id"]] = entry["state"]
            else:
                states[replica["id"]] = "behind"
        if all(state == "ready" for state in states.values()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} not loaded within {timeout_s:g} s: {states}")
        time.sleep(0.1)


def main() -> None:
    train = runpy.run_path(str(HERE / "sklearn" / "train.py"))["train"]
    with tempfile.TemporaryDirectory() as tmp, Client() as client:
        # 1. a model in the registry (a file or a folder; a URL with register_model_url)
        model = client.upload_model(
            train(Path(tmp)), name="sdk-iris", project="demo", framework="sklearn", publish=True
        )
        print(f"model {model['id']} ({model['name']} version {model['version']})")

        # 2. an endpoint version serving it, with the example's pre/post-processing code
        client.add_endpoint(
            "default",
            "sdk_iris",
            version="1",
            engine="sklearn",
            model_id=model["id"],
            preprocess=HERE / "sklearn" / "preprocess.py",
        )

        # 3. the replicas load it in the background and report their state (ready, or failed
        #    with the reason) to the control plane
        for replica, state in wait_until_loaded(client, "default", "sdk_iris/1").items():
            print(f"replica {replica}: {{'sdk_iris/1': {state!r}}}")

        # 4. calls: the body comes second; a version is part of the name or given by keyword
        print("answer:", client.infer("sdk_iris/1", {"x0": 1, "x1": 2}))
        print("answer:", client.infer("sdk_iris", {"x0": [1, -3], "x1": [2, -1]}, version="1"))
        print(
            "same endpoint, no version (the highest serving):", client.infer("sdk_iris", {"x0": 1, "x1": 2})
        )

        # 5. change its options in place, safe against other writers (read, merge, If-Match)
        client.merge_endpoint("default", "sdk_iris", "1", options={"method": "predict_proba"})
        answer = infer_when_loaded(
            client, "sdk_iris/1", {"x0": 1, "x1": 2}, lambda a: isinstance(a["y"][0], list)
        )
        print("probabilities:", answer)

        # 6. clean up: the endpoint first (a model in use cannot be removed)
        client.remove_endpoint("default", "sdk_iris", "1")
        client.remove_model(model["id"])
        print("removed sdk_iris/1 and its model")


if __name__ == "__main__":
    main()
