"""How each system is started, what it serves, and how its answers are checked.

A *variant* is one server configuration (``mlserver`` with ``parallel_workers=2``...). Starting it
gives a :class:`Server` whose *targets* are (model, URL, native request body, answer parser). Every
server binds 127.0.0.1 on ports picked free just before start (MLServer/TorchServe default to
8080-8082 and Ray/PyTriton to 8000, which other things here use), runs in its own session, and is
stopped by signalling every process ever seen in its tree, so Ray's raylet or Triton's stubs
cannot outlive it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _install
import _load
import httpx
import mlserver_settings

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


def _venv_env(python: Path) -> dict:
    """PATH with the venv's bin first (TorchServe's frontend, PyTriton's stub find Python by it)."""
    return {"PATH": f"{python.parent}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(python.parent.parent)}


def _row(ctx: Context, model: str) -> list[float]:
    return ctx.samples[model]["row"]


def _v2_body(row: list[float]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    ).encode()


def _v2_label(answer) -> int:
    return int(answer["outputs"][0]["data"][0])


def _y_label(answer) -> int:
    return int(answer["y"][0])


def _x_body(row: list[float]) -> bytes:
    return json.dumps({"x": row}).encode()


# -- the systems ----------------------------------------------------------------------------------


def start_baseline(ctx: Context, workers: int) -> Server:
    port = free_port()
    server = ctx.spawn(
        f"baseline w{workers}",
        [sys.executable, str(HERE / "baseline_app.py"), str(port), str(workers)],
        cwd=HERE,
        env={"MODELS_DIR": str(ctx.models_for(sys.executable))},
    )
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{port}/predict/{model}"
        server.targets.append(
            Target("baseline", f"w{workers}", model, url, _x_body(_row(ctx, model)), _y_label)
        )
    return server


def modelyard_batching() -> bool:
    """Whether this modelyard's data plane reads ``max_batch_size`` (the dynamic batching option).

    Endpoint options are a free-form dict, so an unknown option is accepted and ignored; asking the
    serving code whether it reads the option is the only honest check without a version number.
    """
    import modelyard.serving

    folder = Path(modelyard.serving.__file__).parent
    return any("max_batch_size" in p.read_text(errors="replace") for p in folder.rglob("*.py"))


def start_modelyard(ctx: Context, workers: int) -> Server:
    from modelyard.client import Client

    port = free_port()
    home = ctx.work / f"modelyard-home-{time.time_ns()}"
    url = f"http://127.0.0.1:{port}"
    exe = str(Path(sys.executable).with_name("modelyard"))
    server = ctx.spawn(
        f"modelyard w{workers}",
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env={"MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "warning"},
    )
    server.cleanup = lambda: shutil.rmtree(home, ignore_errors=True)
    wait_http(server, f"{url}/health/ready", 60)
    models = ctx.models_for(sys.executable)
    with Client(url=url, token=(home / "token").read_text().strip()) as client:
        for model in ("iris", "rf"):
            registered = client.upload_model(
                models / f"{model}.joblib", name=model, project="bench", framework="sklearn"
            )
            endpoints = [(model, {}, f"w{workers}")]
            if model == "rf" and ctx.batching:
                b = ctx.batching
                config = f"w{workers}+batch({b['max_batch_size']},{b['max_batch_delay_ms']}ms)"
                endpoints.append(("rf_batched", dict(b), config))
            for endpoint, options, config in endpoints:
                client.add_endpoint(
                    "default",
                    endpoint=endpoint,
                    version="1",
                    engine="sklearn",
                    model_id=registered["id"],
                    preprocess=HERE / "modelyard_preprocess.py",
                    options=options,
                )
                server.targets.append(
                    Target(
                        "modelyard",
                        config,
                        model,
                        f"{url}/serve/{endpoint}/1",
                        _x_body(_row(ctx, model)),
                        _y_label,
                    )
                )
    return server


def start_mlserver(ctx: Context, workers: int | None) -> Server:
    python = _install.venv_python(ctx.cache, "mlserver")
    http, grpc, metrics = free_port(), free_port(), free_port()
    repo = ctx.work / f"mlserver-{time.time_ns()}"
    mlserver_settings.write(repo, str(ctx.models_for(str(python))), http, grpc, metrics, workers)
    config = "default" if workers is None else f"parallel_workers={workers}"
    server = ctx.spawn(
        f"mlserver {config}",
        [str(python.with_name("mlserver")), "start", str(repo)],
        cwd=repo,
        env=_venv_env(python),
    )
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/v2/models/{model}/infer"
        server.targets.append(Target("mlserver", config, model, url, _v2_body(_row(ctx, model)), _v2_label))
    return server


def start_bentoml(ctx: Context, workers: int) -> Server:
    python = _install.venv_python(ctx.cache, "bentoml")
    port = free_port()
    env = {
        **_venv_env(python),
        "MODELS_DIR": str(ctx.models_for(str(python))),
        "BENCH_WORKERS": str(workers),
        "BENTOML_HOME": str(ctx.work / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    server = ctx.spawn(
        f"bentoml workers={workers}",
        [
            str(python.with_name("bentoml")),
            "serve",
            "bentoml_service:Bench",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=HERE,
        env=env,
    )
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{port}/{model}"
        server.targets.append(
            Target(
                "bentoml", f"workers={workers}", model, url, _x_body(_row(ctx, model)), lambda a: int(a[0])
            )
        )
    return server


def start_ray(ctx: Context, replicas: int) -> Server:
    python = _install.venv_python(ctx.cache, "ray")
    port = free_port()
    env = {
        **_venv_env(python),
        "MODELS_DIR": str(ctx.models_for(str(python))),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": str(ctx.work / "ray"),
    }
    server = ctx.spawn(
        f"ray replicas={replicas}", [str(python), str(HERE / "ray_app.py"), str(port), str(replicas)], env=env
    )
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{port}/{model}"
        server.targets.append(
            Target("ray", f"replicas={replicas}", model, url, _x_body(_row(ctx, model)), _y_label)
        )
    return server


def start_pytriton(ctx: Context, batching: bool) -> Server:
    python = _install.venv_python(ctx.cache, "pytriton")
    http, grpc, metrics = free_port(), free_port(), free_port()
    workspace = ctx.work / f"pytriton-ws-{time.time_ns()}"  # must not exist yet
    libdir = _install.libdir()
    env = {
        **_venv_env(python),
        "MODELS_DIR": str(ctx.models_for(str(python))),
        "LD_LIBRARY_PATH": ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p),
    }
    config = "batching=on" if batching else "batching=off"
    server = ctx.spawn(
        f"pytriton {config}",
        [
            str(python),
            str(HERE / "pytriton_server.py"),
            str(http),
            str(grpc),
            str(metrics),
            str(workspace),
            "on" if batching else "off",
        ],
        env=env,
    )
    server.cleanup = lambda: shutil.rmtree(workspace, ignore_errors=True)
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/v2/models/{model}/infer"
        server.targets.append(Target("pytriton", config, model, url, _v2_body(_row(ctx, model)), _v2_label))
    return server


def start_torchserve(ctx: Context, workers: int) -> Server:
    python = _install.venv_python(ctx.cache, "torchserve")
    if not shutil.which("java") and os.geteuid() == 0 and shutil.which("apt-get"):
        ctx.log("installing a Java runtime for TorchServe (default-jre-headless)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.call(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        subprocess.call(
            ["apt-get", "install", "-y", "-qq", "default-jre-headless"], env=env, stdout=subprocess.DEVNULL
        )
    if not shutil.which("java"):
        raise RuntimeError("no Java runtime (apt-get install default-jre-headless)")
    store = ctx.work / "torchserve-store"
    models = ctx.models_for(str(python))
    env = _venv_env(python)
    for model in ("iris", "rf"):
        if not (store / f"{model}.mar").exists():
            store.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    str(python.with_name("torch-model-archiver")),
                    "--model-name",
                    model,
                    "--version",
                    "1",
                    "--serialized-file",
                    str(models / f"{model}.joblib"),
                    "--handler",
                    str(HERE / "torchserve_handler.py"),
                    "--export-path",
                    str(store),
                    "--force",
                ],
                check=True,
                capture_output=True,
                env={**os.environ, **env},
            )
    http, mgmt, metrics, grpc_i, grpc_m = (free_port() for _ in range(5))
    folder = ctx.work / f"torchserve-{time.time_ns()}"
    folder.mkdir()
    (folder / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{http}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\ngrpc_inference_port={grpc_i}\n"
        f"grpc_management_port={grpc_m}\ndefault_workers_per_model={workers}\n"
        "disable_token_authorization=true\ninstall_py_dep_per_model=false\n"
    )
    server = ctx.spawn(
        f"torchserve workers={workers}",
        [
            str(python.with_name("torchserve")),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(store),
            "--ts-config",
            str(folder / "config.properties"),
            "--models",
            "iris=iris.mar",
            "rf=rf.mar",
        ],
        cwd=folder,
        env=env,
    )
    server.cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/predictions/{model}"
        server.targets.append(
            Target("torchserve", f"workers={workers}", model, url, _x_body(_row(ctx, model)), _y_label)
        )
    return server


@dataclass
class Variant:
    system: str
    config: str
    start: Callable[[Context], Server]
    startup_s: float = 120


VARIANTS: list[Variant] = [
    Variant("modelyard", "w1", lambda c: start_modelyard(c, 1)),
    Variant("modelyard", "w2", lambda c: start_modelyard(c, 2)),
    Variant("baseline", "w1", lambda c: start_baseline(c, 1)),
    Variant("baseline", "w2", lambda c: start_baseline(c, 2)),
    Variant("pytriton", "batching=on", lambda c: start_pytriton(c, True)),
    Variant("pytriton", "batching=off", lambda c: start_pytriton(c, False)),
    Variant("mlserver", "default", lambda c: start_mlserver(c, None)),
    Variant("mlserver", "parallel_workers=0", lambda c: start_mlserver(c, 0)),
    Variant("mlserver", "parallel_workers=2", lambda c: start_mlserver(c, 2)),
    Variant("torchserve", "workers=1", lambda c: start_torchserve(c, 1)),
    Variant("torchserve", "workers=2", lambda c: start_torchserve(c, 2)),
    Variant("bentoml", "workers=1", lambda c: start_bentoml(c, 1)),
    Variant("bentoml", "workers=2", lambda c: start_bentoml(c, 2)),
    Variant("ray", "replicas=1", lambda c: start_ray(c, 1)),
    Variant("ray", "replicas=2", lambda c: start_ray(c, 2)),
]
SYSTEMS = list(dict.fromkeys(v.system for v in VARIANTS))
PEERS = [s for s in SYSTEMS if s not in ("modelyard", "baseline")]


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
