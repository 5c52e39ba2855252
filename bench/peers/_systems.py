"""How each system is started, what it serves, and how its answers are checked.

A *variant* is one server configuration (``mlserver`` with ``parallel_workers=2``...). Starting it
gives a :class:`Server` whose *targets* are (model, URL, native request body, answer parser). The
shared machinery is in ``_servers``; the peers (own virtualenvs) in ``_peer_systems``; here are
modelyard, the bare baseline, and the list of variants.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _workers
from _peer_systems import start_bentoml, start_mlserver, start_pytriton, start_ray, start_torchserve
from _servers import (
    HERE,
    Context,
    Server,
    Target,
    free_port,
    row,
    v2_body,
    v2_label,
    wait_http,
    wait_targets,
    x_body,
    y_label,
)

__all__ = [
    "PEERS",
    "SYSTEMS",
    "VARIANTS",
    "Context",
    "Server",
    "Variant",
    "modelyard_batching",
    "wait_targets",
]


# -- the systems ----------------------------------------------------------------------------------


def start_baseline(ctx: Context, workers: int) -> Server:
    port = free_port()
    server = ctx.spawn(
        f"baseline w{workers}",
        [sys.executable, str(HERE / "baseline_app.py"), str(port), str(workers)],
        cwd=HERE,
        env={"MODELS_DIR": str(ctx.models_for(sys.executable))},
    )
    for model in ("iris", "rf"):  # the peers' V2 body, like modelyard's /v2 rows
        url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
        server.targets.append(
            Target("baseline", f"w{workers} /v2", model, url, v2_body(row(ctx, model)), v2_label)
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


def start_modelyard(ctx: Context, workers: int, reuse_port: bool = True) -> Server:
    """``modelyard serve --workers N``, each model served twice: on ``/v2`` with the peers' V2 body
    (an endpoint without hooks: the request's tensor goes to the engine as it is), and on ``/serve``
    with ``{"x": [...]}`` through ``modelyard_preprocess.py`` (the README's older row)."""
    from modelyard.client import Client

    port = free_port()
    home = ctx.work / f"modelyard-home-{time.time_ns()}"
    metrics = ctx.work / f"modelyard-metrics-{time.time_ns()}"
    url = f"http://127.0.0.1:{port}"
    exe = str(Path(sys.executable).with_name("modelyard"))
    env = {
        "MODELYARD_HOME": str(home),
        "MODELYARD_LOG_LEVEL": "warning",
        "MODELYARD_ACCESS_LOG": "false",
        "MODELYARD_METRICS_DIR": str(metrics),
        # false: uvicorn's one shared listening socket (before issue 14), to compare
        "MODELYARD_REUSE_PORT": "true" if reuse_port else "false",
    }
    server = ctx.spawn(
        f"modelyard w{workers}",
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env,
    )

    def cleanup() -> None:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(metrics, ignore_errors=True)

    server.cleanup = cleanup
    if workers > 1:
        server.per_worker = lambda: _workers.requests_by_pid(metrics)
    wait_http(server, f"{url}/health/ready", 60)
    models = ctx.models_for(sys.executable)
    with Client(url=url, token=(home / "token").read_text().strip()) as client:
        for model in ("iris", "rf"):
            registered = client.upload_model(
                models / f"{model}.joblib", name=model, project="bench", framework="sklearn"
            )
            # (endpoint, options, config); RF also batched when this modelyard batches
            name = f"w{workers}" + ("" if reuse_port else "-shared-socket")
            endpoints = [(model, {}, name)]
            if model == "rf" and ctx.batching:
                b = ctx.batching
                config = f"{name}+batch({b['max_batch_size']},{b['max_batch_delay_ms']}ms)"
                endpoints.append(("rf_batched", dict(b), config))
            for endpoint, options, config in endpoints:
                sample = row(ctx, model)
                client.add_endpoint(  # the tensor names the peers' V2 body uses (x in, y out)
                    "default",
                    endpoint=endpoint,
                    version="1",
                    engine="sklearn",
                    model_id=registered["id"],
                    options=options,
                    inputs=[{"name": "x", "dtype": "float64", "shape": [-1, len(sample)]}],
                    outputs=[{"name": "y", "dtype": "int64", "shape": [-1]}],
                )
                server.targets.append(
                    Target(
                        "modelyard",
                        f"{config} /v2",
                        model,
                        f"{url}/v2/models/{endpoint}/infer",
                        v2_body(sample),
                        v2_label,
                    )
                )
                if model == "rf" and not options and ctx.batching:
                    continue  # unbatched RF: the /v2 row alone (the /serve one adds nothing)
                client.add_endpoint(
                    "default",
                    endpoint=f"{endpoint}_x",
                    version="1",
                    engine="sklearn",
                    model_id=registered["id"],
                    preprocess=HERE / "modelyard_preprocess.py",
                    options=options,
                )
                server.targets.append(
                    Target(
                        "modelyard",
                        f"{config} /serve",
                        model,
                        f"{url}/serve/{endpoint}_x/1",
                        x_body(sample),
                        y_label,
                    )
                )
    return server


@dataclass
class Variant:
    system: str
    config: str
    start: Callable[[Context], Server]
    startup_s: float = 120
    default: bool = True
    """False: measured only when ``--configs`` names it (comparisons, not the table)."""

    @property
    def key(self) -> str:
        """``system/config``, what ``--configs`` names."""
        return f"{self.system}/{self.config}"


VARIANTS: list[Variant] = [
    Variant("modelyard", "w1", lambda c: start_modelyard(c, 1)),
    Variant("modelyard", "w2", lambda c: start_modelyard(c, 2)),
    Variant("modelyard", "w2-shared-socket", lambda c: start_modelyard(c, 2, False), default=False),
    Variant("baseline", "w1", lambda c: start_baseline(c, 1)),
    Variant("baseline", "w2", lambda c: start_baseline(c, 2)),
    Variant("pytriton", "instances=1", lambda c: start_pytriton(c, 1)),
    Variant("pytriton", "instances=2", lambda c: start_pytriton(c, 2)),
    Variant("mlserver", "parallel_workers=0", lambda c: start_mlserver(c, 0)),
    Variant("mlserver", "parallel_workers=2", lambda c: start_mlserver(c, 2)),
    Variant("mlserver", "default", lambda c: start_mlserver(c, None), default=False),
    Variant("torchserve", "workers=1", lambda c: start_torchserve(c, 1)),
    Variant("torchserve", "workers=2", lambda c: start_torchserve(c, 2)),
    Variant("bentoml", "workers=1", lambda c: start_bentoml(c, 1)),
    Variant("bentoml", "workers=2", lambda c: start_bentoml(c, 2)),
    Variant("ray", "replicas=1", lambda c: start_ray(c, 1)),
    Variant("ray", "replicas=2", lambda c: start_ray(c, 2)),
]
SYSTEMS = list(dict.fromkeys(v.system for v in VARIANTS))
PEERS = [s for s in SYSTEMS if s not in ("modelyard", "baseline")]
