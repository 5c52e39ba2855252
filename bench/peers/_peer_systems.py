"""The peers, each started from its own virtualenv (``_install``): PyTriton, MLServer, BentoML,
Ray Serve, TorchServe, each in its best reasonable configuration (batching on, request logging
off), serving the same two models trained by its own scikit-learn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import _install
import mlserver_settings
from _servers import (
    HERE,
    Context,
    Server,
    Target,
    free_port,
    row,
    v2_body,
    v2_label,
    venv_env,
    x_body,
    y_label,
)


def start_mlserver(ctx: Context, workers: int | None) -> Server:
    python = _install.venv_python(ctx.cache, "mlserver")
    http, grpc, metrics = free_port(), free_port(), free_port()
    repo = ctx.work / f"mlserver-{time.time_ns()}"
    mlserver_settings.write(repo, str(ctx.models_for(str(python))), http, grpc, metrics, workers)
    config = "default" if workers is None else f"parallel_workers={workers}"
    size, wait = mlserver_settings.BATCHING
    server = ctx.spawn(
        f"mlserver {config}",
        [str(python.with_name("mlserver")), "start", str(repo)],
        cwd=repo,
        env=venv_env(python),
    )
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/v2/models/{model}/infer"
        label = f"{config} batch({size},{wait * 1000:g}ms)" if model == "rf" else config
        server.targets.append(Target("mlserver", label, model, url, v2_body(row(ctx, model)), v2_label))
    return server


def start_bentoml(ctx: Context, workers: int) -> Server:
    python = _install.venv_python(ctx.cache, "bentoml")
    port = free_port()
    env = {
        **venv_env(python),
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
        body = json.dumps({"x": [row(ctx, model)]}).encode()  # a batchable API takes a batch
        server.targets.append(
            Target("bentoml", f"workers={workers} batchable(64)", model, url, body, lambda a: int(a[0]))
        )
    return server


def start_ray(ctx: Context, replicas: int) -> Server:
    python = _install.venv_python(ctx.cache, "ray")
    port = free_port()
    env = {
        **venv_env(python),
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
            Target("ray", f"replicas={replicas} batch(64,2ms)", model, url, x_body(row(ctx, model)), y_label)
        )
    return server


def start_pytriton(ctx: Context, instances: int) -> Server:
    python = _install.venv_python(ctx.cache, "pytriton")
    http, grpc, metrics = free_port(), free_port(), free_port()
    workspace = ctx.work / f"pytriton-ws-{time.time_ns()}"  # must not exist yet
    libdir = _install.libdir()
    env = {
        **venv_env(python),
        "MODELS_DIR": str(ctx.models_for(str(python))),
        "LD_LIBRARY_PATH": ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p),
    }
    config = f"instances={instances} batch(64,0ms)"
    server = ctx.spawn(
        f"pytriton {config}",
        [
            str(python),
            str(HERE / "pytriton_server.py"),
            str(http),
            str(grpc),
            str(metrics),
            str(workspace),
            str(instances),
        ],
        env=env,
    )
    server.cleanup = lambda: shutil.rmtree(workspace, ignore_errors=True)
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/v2/models/{model}/infer"
        server.targets.append(Target("pytriton", config, model, url, v2_body(row(ctx, model)), v2_label))
    return server


TORCHSERVE_BATCHING = (64, 2)
"""TorchServe's ``batchSize`` and ``maxBatchDelay`` (ms) for both models: modelyard's 64 / 2 ms."""


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
    env = venv_env(python)
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
    size, delay_ms = TORCHSERVE_BATCHING
    per_model = {"minWorkers": workers, "maxWorkers": workers, "batchSize": size, "maxBatchDelay": delay_ms}
    models_json = json.dumps(
        {m: {"1": {"defaultVersion": True, "marName": f"{m}.mar", **per_model}} for m in ("iris", "rf")}
    )
    (folder / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{http}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\ngrpc_inference_port={grpc_i}\n"
        f"grpc_management_port={grpc_m}\ndefault_workers_per_model={workers}\n"
        "disable_token_authorization=true\ninstall_py_dep_per_model=false\n"
        "disable_system_metrics=true\nload_models=iris.mar,rf.mar\n"
        f"models={models_json}\n"
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
            "--log-config",
            str(HERE / "log4j2_quiet.xml"),
        ],
        cwd=folder,
        env=env,
    )
    server.cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)
    for model in ("iris", "rf"):
        url = f"http://127.0.0.1:{http}/predictions/{model}"
        server.targets.append(
            Target(
                "torchserve",
                f"workers={workers} batch({size},{delay_ms}ms)",
                model,
                url,
                x_body(row(ctx, model)),
                y_label,
            )
        )
    return server
