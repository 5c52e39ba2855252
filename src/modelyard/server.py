"""Composition root: builds the apps from :class:`Settings` and runs them under uvicorn.

* ``modelyard serve`` — all in one process group: the control plane (``/api``,
  ``/docs``, ``/ui``) and an inference replica of ``settings.service``
  (``/serve``, ``/health``, ``/status``). The replica talks to the control plane
  through the same REST API, in-process (no socket), so the two stay as
  separable as when they run on different machines.
* ``modelyard inference`` — a replica alone, syncing from ``--control-plane``.
* ``modelyard control-plane`` — the control plane alone (``/api``, ``/docs``, ``/ui``), for
  deployments where replicas run elsewhere (several ``modelyard inference`` processes or pods).

Both replicas also speak the Open Inference Protocol over gRPC when
``settings.grpc_port`` is set (:mod:`modelyard.serving.oip_grpc`, started and
stopped with the replica's runtime; each worker binds the port with ``SO_REUSEPORT``).

With ``--workers N`` uvicorn starts N processes; each builds its own apps
through the ``*_factory`` functions, reading the settings that the parent put
in ``MODELYARD_SETTINGS_JSON``. With ``--workers auto`` the count follows load
(:mod:`modelyard.autoscale`, on uvicorn's multiprocess supervisor).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from modelyard.logs import logging_config, setup_logging
from modelyard.metrics import Metrics
from modelyard.serving.app import InferenceApp, Receive, Scope, Send
from modelyard.serving.runtime import InferenceRuntime
from modelyard.settings import Settings

log = logging.getLogger("modelyard")

SETTINGS_ENV = "MODELYARD_SETTINGS_JSON"
CONTROL_PREFIXES = ("/api", "/ui", "/docs", "/openapi.json", "/redoc")


class StopSignal:
    """Set once this process is asked to stop (SIGINT, SIGTERM), so waiting GETs end at once.

    uvicorn's graceful shutdown waits for every request in flight, and a replica's config
    long-poll waits up to 20 s: Ctrl-C on a control plane with replicas attached took that
    long. Armed at lifespan startup, after uvicorn installed its own handlers, it chains a
    handler in front of them (in the main thread only: servers that tests run in a thread
    keep the plain behaviour). Once set, :meth:`receive` tells a GET request its caller is
    gone, so the long-poll, which checks that every second, answers 304 and the replica
    re-polls and finds the server stopping. Requests with a body, and streamed downloads,
    still finish.
    """

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def arm(self) -> None:
        event = self.event = asyncio.Event()
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(event.set)
                previous(signum, frame)

            signal.signal(sig, handler)

    def receive(self, receive: Receive) -> Receive:
        """``receive``, answering ``http.disconnect`` at once when the process is stopping."""
        event = self.event
        if event is None:
            return receive

        async def receive_until_stopping() -> dict[str, Any]:
            if event.is_set():
                return {"type": "http.disconnect"}
            return await receive()

        return receive_until_stopping


async def _redirect_to_dashboard(send: Send) -> None:
    await send({"type": "http.response.start", "status": 307, "headers": [(b"location", b"/ui")]})
    await send({"type": "http.response.body", "body": b""})


async def _control_http(app: Any, stop: StopSignal, scope: Scope, receive: Receive, send: Send) -> None:
    """A control plane request: ``GET /`` goes to the dashboard; GETs end when stopping."""
    method = scope.get("method")
    if method in ("GET", "HEAD") and scope.get("path") == "/":
        await _redirect_to_dashboard(send)
        return
    if method == "GET":
        receive = stop.receive(receive)
    await app(scope, receive, send)


class ControlPlaneApp:
    """The control plane app of ``modelyard control-plane``, with the :class:`StopSignal` and
    ``GET /`` going to the dashboard."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.stop = StopSignal()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def receive_and_arm() -> dict[str, Any]:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.stop.arm()
                return message

            await self.control(scope, receive_and_arm, send)
        elif scope["type"] == "http":
            await _control_http(self.control, self.stop, scope, receive, send)
        else:
            await self.control(scope, receive, send)


class AllInOneApp:
    """Dispatches control-plane paths (and ``GET /``, to the dashboard) to the FastAPI app and
    everything else to the replica."""

    def __init__(self, control: Any, inference: InferenceApp) -> None:
        self.control = control
        self.inference = inference
        self.stop = StopSignal()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(CONTROL_PREFIXES) or path == "/":
            await _control_http(self.control, self.stop, scope, receive, send)
        else:
            await self.inference(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            context = self.control.router.lifespan_context(self.control)
            await context.__aenter__()
            await self.inference.runtime.start()
        except Exception as exc:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self.stop.arm()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            await self.inference.runtime.stop()
            await context.__aexit__(None, None, None)
        finally:
            await send({"type": "lifespan.shutdown.complete"})


def create_metrics(settings: Settings) -> Metrics:
    """This process's metrics; shared across workers through ``settings.metrics_dir`` when N > 1."""
    shared = settings.metrics_dir if settings.several_processes() else None
    return Metrics(service=settings.service, multiprocess_dir=shared)


def create_all_in_one_app(settings: Settings, metrics: Metrics | None = None) -> AllInOneApp:
    from modelyard.control.api import create_control_app

    control = create_control_app(settings)
    transport = httpx.ASGITransport(app=control)
    runtime = InferenceRuntime(
        settings,
        transport=transport,
        metrics=metrics or create_metrics(settings),
        grpc_port=settings.grpc_port,
    )
    return AllInOneApp(control, InferenceApp(runtime, manage_lifespan=False))


def create_inference_app(settings: Settings, metrics: Metrics | None = None) -> InferenceApp:
    runtime = InferenceRuntime(
        settings, metrics=metrics or create_metrics(settings), grpc_port=settings.grpc_port
    )
    return InferenceApp(runtime)


def prepare_metrics_dir(settings: Settings) -> tuple[Settings, Path | None]:
    """With several workers: an empty multiprocess folder for prometheus_client, in the env.

    Set before uvicorn spawns the workers, so their prometheus_client chooses its mmap-backed
    values at import. Returns the settings to export and the folder to remove afterwards (the
    temporary one this run made), if any.
    """
    if not settings.several_processes():
        return settings, None
    made = settings.metrics_dir is None
    path = Path(tempfile.mkdtemp(prefix="modelyard-metrics-")) if made else Path(settings.metrics_dir or "")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return settings.model_copy(update={"metrics_dir": path}), path if made else None


def _settings_from_env() -> Settings:
    raw = os.environ.get(SETTINGS_ENV)
    if raw:
        return Settings.model_validate(orjson.loads(raw))
    return Settings()


def all_in_one_factory() -> AllInOneApp:
    """uvicorn factory for worker processes of ``modelyard serve``."""
    return create_all_in_one_app(_settings_from_env())


def inference_factory() -> InferenceApp:
    """uvicorn factory for worker processes of ``modelyard inference``."""
    return create_inference_app(_settings_from_env())


def control_plane_factory() -> ControlPlaneApp:
    """uvicorn factory for worker processes of ``modelyard control-plane``."""
    from modelyard.control.api import create_control_app

    return ControlPlaneApp(create_control_app(_settings_from_env()))


def _export(settings: Settings) -> None:
    os.environ[SETTINGS_ENV] = settings.model_dump_json()


def _uvicorn(factory: str, settings: Settings) -> None:
    import uvicorn

    settings, made_dir = prepare_metrics_dir(settings)
    _export(settings)
    try:
        _run_uvicorn(uvicorn, factory, settings)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def _run_uvicorn(uvicorn: Any, factory: str, settings: Settings) -> None:
    options: dict[str, Any] = {
        # every worker process applies the same logging config (uvicorn's lines included)
        "log_config": logging_config(settings),
        "log_level": None,
        "access_log": settings.access_log,
        "loop": "auto",
        "http": "auto",
    }
    if settings.autoscale:
        from modelyard.autoscale import run_autoscaled

        run_autoscaled(factory, settings, options)
        return
    if settings.workers > 1 and settings.reuse_port:
        from modelyard import reuseport

        if reuseport.supported():  # a socket per worker: connections spread evenly (issue 14)
            config = uvicorn.Config(factory, factory=True, host=settings.host, port=settings.port,
                                    workers=settings.workers, **options)  # fmt: skip
            reuseport.run(config)
            return
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        **options,
    )


def prepare_control_plane(settings: Settings) -> None:
    """Create the home folder, run migrations and create the admin token once, before workers fork."""
    from modelyard.control.api import create_control_app

    settings.resolved_home().mkdir(parents=True, exist_ok=True)
    create_control_app(settings)


def run_all_in_one(settings: Settings) -> None:
    """``modelyard serve``: control plane and one service's replica(s) on one port."""
    setup_logging(settings)
    prepare_control_plane(settings)
    if settings.examples:
        from modelyard.demo import deploy_examples_when_up

        deploy_examples_when_up(settings)
    _uvicorn("modelyard.server:all_in_one_factory", settings)


def run_control_plane(settings: Settings) -> None:
    """``modelyard control-plane``: the control plane alone (API, docs, dashboard), no replica.

    Workers share nothing but the database: a long-poll in one worker learns of a change
    made through another by polling the service's revision.
    """
    setup_logging(settings)
    prepare_control_plane(settings)
    _uvicorn("modelyard.server:control_plane_factory", settings)


def run_inference(settings: Settings) -> None:
    """``modelyard inference``: a replica of ``settings.service`` syncing from the control plane."""
    setup_logging(settings)
    _uvicorn("modelyard.server:inference_factory", settings)
