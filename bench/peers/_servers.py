"""What every system's harness shares: targets, the running server (its process tree, CPU, stop),
the context (models per interpreter, logs), the request bodies, and the readiness checks.

Every server binds 127.0.0.1 on ports picked free just before start (MLServer/TorchServe default to
8080-8082 and Ray/PyTriton to 8000, which other things here use), runs in its own session, and is
stopped by signalling every process ever seen in its tree, so Ray's raylet or Triton's stubs
cannot outlive it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _load
import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    system: str
    config: str
    model: str
    url: str
    body: bytes
    label: Callable[[object], int]
    """Pulls the predicted class out of the decoded JSON answer."""

    @property
    def name(self) -> str:
        return f"{self.system} {self.config}".strip()


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    log: Path
    targets: list[Target] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    cleanup: Callable[[], None] | None = None
    per_worker: Callable[[], dict[int, float]] | None = None
    """Requests answered so far by each worker pid (modelyard with several workers), else None."""

    def log_tail(self, n: int = 6) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip()[:200] for line in lines[-n:])

    def cpu(self) -> dict[int, float]:
        sample = _load.tree_cpu(self.proc.pid, self.seen)
        self.seen |= set(sample)
        return sample

    def stop(self) -> None:
        self.cpu()
        pids = self.seen | {self.proc.pid}
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()
                if not any(_alive(p) for p in pids):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self.proc.poll()
        if self.cleanup:
            self.cleanup()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Context:
    cache: Path
    work: Path
    samples: dict
    log: Callable[[str], None] = print
    batching: dict | None = None
    """modelyard's dynamic batching options for the RF endpoint, or None when modelyard has none."""
    _models: dict[str, Path] = field(default_factory=dict)

    def models_for(self, python: str) -> Path:
        """Model files trained by ``python``'s own scikit-learn (same data, seed, hyperparameters)."""
        if python not in self._models:
            out = self.work / f"models-{len(self._models)}"
            subprocess.run([python, str(HERE / "train_models.py"), str(out)], check=True, capture_output=True)
            got = json.loads((out / "samples.json").read_text())
            for model, sample in self.samples.items():
                if got[model]["label"] != sample["label"]:
                    raise RuntimeError(f"{python} trains a different {model} model: {got[model]} vs {sample}")
            self._models[python] = out
        return self._models[python]

    def spawn(self, name: str, cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> Server:
        logfile = self.work / "logs" / f"{name.replace(' ', '_').replace('=', '')}-{time.time_ns()}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd or self.work,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return Server(name=name, proc=proc, log=logfile)


def venv_env(python: Path) -> dict:
    """PATH with the venv's bin first (TorchServe's frontend, PyTriton's stub find Python by it)."""
    return {"PATH": f"{python.parent}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(python.parent.parent)}


def row(ctx: Context, model: str) -> list[float]:
    return ctx.samples[model]["row"]


def v2_body(row: list[float]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    ).encode()


def v2_label(answer) -> int:
    return int(answer["outputs"][0]["data"][0])


def y_label(answer) -> int:
    return int(answer["y"][0])


def x_body(row: list[float]) -> bytes:
    return json.dumps({"x": row}).encode()


def wait_http(server: Server, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode}: {server.log_tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s: {server.log_tail()}")


def wait_targets(server: Server, expected: dict[str, int], timeout: float, in_a_row: int = 8) -> None:
    """Every target answers its native request with the right class, ``in_a_row`` times running.

    Several in a row so that each worker/replica has loaded the model; and checking the class keeps a
    system that answers fast but wrong (or with an error body) out of the table.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10, headers={"content-type": "application/json"}) as http:
        for target in server.targets:
            streak, last = 0, ""
            while streak < in_a_row:
                if server.proc.poll() is not None:
                    raise RuntimeError(f"exited with {server.proc.returncode}: {server.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{target.model} not answering after {timeout:.0f} s ({last[:200]}): "
                        f"{server.log_tail()}"
                    )
                try:
                    response = http.post(target.url, content=target.body)
                    last = f"{response.status_code} {response.text}"
                    if response.status_code == 200:
                        got = target.label(response.json())
                        if got != expected[target.model]:
                            raise RuntimeError(
                                f"{target.model}: answered class {got}, expected "
                                f"{expected[target.model]}: {response.text[:200]}"
                            )
                        streak += 1
                        continue
                except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                    last = repr(exc)
                streak = 0
                time.sleep(0.25)
