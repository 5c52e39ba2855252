"""Swap latency: from a change's API call returning to the new version answering on every worker.

Starts a real `modelyard serve --workers N` (SQLite, a temporary home) and makes 20 changes
(by default), cycling over four kinds:

* ``code``    — new preprocess code on an endpoint version (``endpoint update --preprocess``);
* ``model``   — a new model on an endpoint version;
* ``canary``  — canary weights flipped from one target to the other;
* ``publish`` — a model published, auto-deployed as ``auto/<n>`` and given all of the
  prefix-mode canary's traffic (the newest version gets weight 1).

After each call returns, requests go out every 5 ms on new connections (so every worker process
answers); for ``publish`` the clock starts when the publish call is made (the upload and the
auto-deploy it triggers are part of what a publisher waits for), for the others when the call
returns; each answer names the version (``X-Modelyard-Endpoint``), its code's tag and the
worker's pid. Reported per kind and overall: time to the first answer from the new version, and
time until every worker has answered from it (median and max). A worker that answers from the
old version after it already answered from the new one counts as a regression (expected: 0).

    .venv/bin/python bench/swap_latency.py [--workers 2] [--changes 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

CODE = """
import os

class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        return {"tag": "TAG", "pid": os.getpid()}
"""
BODY = {"x0": 1, "x1": 2}
SVC = "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(url: str, path: str) -> tuple[str, str, int]:
    """``(version, tag, pid)`` of one answer, on a new connection."""
    r = httpx.post(f"{url}{path}", json=BODY, timeout=10)
    if r.status_code != 200:
        return ("", f"status {r.status_code}", 0)
    answer = r.json()
    return r.headers.get("x-modelyard-endpoint", ""), str(answer["tag"]), int(answer["pid"])


def workers_of(url: str, path: str, count: int) -> set[int]:
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"saw only workers {pids}")
        pids.add(ask(url, path)[2])
    return pids


def measure(
    url: str, path: str, pids: set[int], is_new: Callable[[str, str], bool], started: float | None = None
) -> tuple[float, float, int]:
    """Seconds to the first new answer, to every worker answering new; regressions seen.

    The clock starts at ``started`` (a ``time.monotonic()`` taken when the change's call was
    made), else now, right after the call returned."""
    started = time.monotonic() if started is None else started
    first: float | None = None
    switched: dict[int, float] = {}
    regressions = 0
    while len(switched) < len(pids):
        now = time.monotonic()
        if now - started > 30:
            raise TimeoutError(f"{path}: workers {set(pids) - set(switched)} never switched")
        version, tag, pid = ask(url, path)
        if pid and is_new(version, tag):
            first = first if first is not None else time.monotonic() - started
            switched.setdefault(pid, time.monotonic() - started)
        elif pid in switched:
            regressions += 1
        time.sleep(0.005)
    assert first is not None
    return first, max(switched.values()), regressions


def tag_is(tag: str) -> Callable[[str, str], bool]:
    return lambda _version, answered: answered == tag


def version_is(key: str) -> Callable[[str, str], bool]:
    return lambda version, _tag: version == key


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from modelyard.client import Client

    tmp = Path(tempfile.mkdtemp(prefix="modelyard-swap-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(tmp / "home"), "MODELYARD_URL": url}
    modelyard = str(Path(sys.executable).with_name("modelyard"))
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [modelyard, "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit((tmp / "serve.log").read_text())
            time.sleep(0.2)
        client = Client(url=url, token=(tmp / "home" / "token").read_text().strip())

        def code(tag: str) -> Path:
            path = tmp / f"{tag.replace('/', '_')}.py"
            path.write_text(CODE.replace("TAG", tag))
            return path

        def model(seed: int, name: str = "m", publish: bool = False) -> dict[str, Any]:
            rng = np.random.default_rng(seed)
            x = rng.normal(size=(50, 2))
            path = tmp / f"{name}-{seed}.pkl"
            joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), path)
            return client.upload_model(path, name=name, project="bench", framework="sklearn", publish=publish)

        base = model(0)
        for version in ("1", "2"):
            client.add_endpoint(
                SVC, "e", version, engine="sklearn", model_id=base["id"], preprocess=code("e0")
            )
        client.add_canary(SVC, "flip", weights=[1, 0], targets=["e/1", "e/2"])
        model(100, "auto", publish=True)
        client.add_auto_deploy(SVC, "auto", engine="sklearn", name="auto", project="bench", published=True,
                               max_versions=2, preprocess=code("auto"))  # fmt: skip
        client.add_canary(SVC, "newest", weights=[1], prefix="auto")
        pids = workers_of(url, "/serve/e/1", args.workers)
        for path in ("/serve/flip", "/serve/newest"):
            workers_of(url, path, args.workers)

        rows: dict[str, list[tuple[float, float, int]]] = {}
        flip_to = 1
        for index in range(args.changes):
            kind = ("code", "model", "canary", "publish")[index % 4]
            if kind == "code":
                tag = f"e{index + 1}"
                new_code = code(tag)
                client.update_endpoint(SVC, "e", "1", preprocess=new_code)
                result = measure(url, "/serve/e/1", pids, tag_is(tag))
            elif kind == "model":
                tag = f"m{index}"
                new_model, new_code = model(index + 1), code(tag)  # prepared before the clock starts
                client.update_endpoint(SVC, "e", "2", model_id=new_model["id"], preprocess=new_code)
                result = measure(url, "/serve/e/2", pids, tag_is(tag))
            elif kind == "canary":
                weights = [0, 1] if flip_to == 2 else [1, 0]
                target = f"e/{flip_to}"
                client.add_canary(SVC, "flip", weights=weights, targets=["e/1", "e/2"])
                result = measure(url, "/serve/flip", pids, version_is(target))
                flip_to = 1 if flip_to == 2 else 2
            else:
                rng = np.random.default_rng(1000 + index)
                x = rng.normal(size=(50, 2))
                model_path = tmp / f"auto-{index}.pkl"
                joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), model_path)
                before = {d["key"] for d in client.get_auto_deploy(SVC, "auto")["deployed"]}
                published = time.monotonic()  # the clock starts at the publish call (issue 14)
                client.upload_model(
                    model_path, name="auto", project="bench", framework="sklearn", publish=True
                )
                after = {d["key"] for d in client.get_auto_deploy(SVC, "auto")["deployed"]}
                (key,) = after - before
                result = measure(url, "/serve/newest", pids, version_is(key), started=published)
            rows.setdefault(kind, []).append(result)
            rows.setdefault("all", []).append(result)
            print(f"change {index + 1:2d} {kind:8s} first {result[0] * 1000:7.1f} ms  "
                  f"all workers {result[1] * 1000:7.1f} ms  regressions {result[2]}", flush=True)  # fmt: skip
        print()
        print(f"swap latency, modelyard serve --workers {args.workers}, {args.changes} changes (ms)")
        print(f"{'kind':8s} {'n':>3s} {'first med':>10s} {'all med':>9s} {'all max':>9s} {'regress':>8s}")
        for kind in ("code", "model", "canary", "publish", "all"):
            results = rows.get(kind, [])
            if not results:
                continue
            firsts = [r[0] * 1000 for r in results]
            alls = [r[1] * 1000 for r in results]
            med_first, med_all = statistics.median(firsts), statistics.median(alls)
            regressions = sum(r[2] for r in results)
            line = f"{kind:8s} {len(results):3d} {med_first:10.1f} {med_all:9.1f} {max(alls):9.1f}"
            print(f"{line} {regressions:8d}")
        client.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    main()
