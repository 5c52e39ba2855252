"""The control plane as a FastAPI app: composition, error mapping, no tracebacks on the wire.

:func:`create_control_app` is what the composition root (``modelyard serve``,
``modelyard control``) calls; it migrates the database, builds the core
objects (kept on ``app.state`` for the dashboard and tests), makes sure the
admin token and the default service exist, and mounts :func:`create_router`
under ``/api`` (its routes check the token, then bound the body, before reading it:
:class:`~modelyard.control.guard.GuardedRoute`). Every error leaves as
``{"error": ..., "kind": ...}`` with the status from :mod:`modelyard.http_errors`; anything
unexpected is logged here and answered 500 without detail.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.artifacts import ArtifactStore
from modelyard.control.auth import Auth
from modelyard.control.guard import MAX_BODY_STATE
from modelyard.control.openapi import describe_api
from modelyard.control.plane import ControlPlane
from modelyard.control.routes import create_router
from modelyard.control.tokens import REPLICA_TOKEN_NAME
from modelyard.errors import ModelyardError
from modelyard.http_errors import error_body, error_headers, status_for
from modelyard.settings import Settings
from modelyard.store import Database, upgrade

log = logging.getLogger(__name__)

__all__ = ["CatchAllMiddleware", "create_control_app", "create_router", "install_error_handlers"]


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def _modelyard_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelyardError)
    return JSONResponse(error_body(exc), status_code=status_for(exc), headers=error_headers(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": _validation_message(exc), "kind": "validation_error"}, status_code=422)


PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of ``request``'s path answers (Starlette's 405 names one route's).

    Asks the router itself, method by method, so included routers (nested or not) count.
    """
    allowed = []
    for method in PROBED_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        methods = allowed_methods(request)
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"allow": ", ".join(methods)}
    return JSONResponse(
        {"error": str(exc.detail), "kind": "http_error"}, status_code=exc.status_code, headers=headers
    )


class CatchAllMiddleware:
    """Turn an unexpected exception into a logged 500 ``{"error": "internal error"}``.

    Starlette's own server-error handler would re-raise after answering; this
    one logs once, with the traceback, and keeps the process quiet otherwise.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean answer; let the server close the connection
            response = JSONResponse({"error": "internal error", "kind": "internal"}, status_code=500)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one error mapping on ``app`` (also usable by apps embedding the router)."""
    app.add_exception_handler(ModelyardError, _modelyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(CatchAllMiddleware)


def _include_monitoring(app: FastAPI, plane: ControlPlane, settings: Settings) -> None:
    """Metric rules and live stats under ``/api``, and the web dashboard at ``/ui``."""
    from modelyard.control.monitoring import Monitoring
    from modelyard.control.monitoring_routes import create_monitoring_router
    from modelyard.dashboard.app import create_dashboard_router

    monitoring = Monitoring(
        plane.db,
        on_change=plane._changed,
        max_report_bytes=settings.stats_max_bytes,
        max_replicas=settings.stats_max_replicas,
    )
    auth = Auth(plane, require_token_for_reads=settings.require_token_for_reads)
    app.state.monitoring = monitoring
    app.include_router(create_monitoring_router(monitoring, auth), prefix="/api")
    app.include_router(create_dashboard_router(plane, monitoring, auth))


def _include_traffic(app: FastAPI, plane: ControlPlane, settings: Settings) -> None:
    """Canary routing endpoints and auto-deploy rules under ``/api``; the registry's deploy hook."""
    from modelyard.control.autodeploy import AutoDeploy
    from modelyard.control.canary import Canaries
    from modelyard.control.traffic_routes import create_traffic_router

    canaries = Canaries(plane.db, on_change=plane._changed)
    autodeploy = AutoDeploy(
        plane.db,
        on_change=plane._changed,
        check_engine=plane._check_engine,
        check_preprocess=plane._check_preprocess,
    )
    plane.registry.add_hook(autodeploy.on_model_changed)
    auth = Auth(plane, require_token_for_reads=settings.require_token_for_reads)
    app.state.canaries = canaries
    app.state.autodeploy = autodeploy
    app.include_router(create_traffic_router(canaries, autodeploy, auth), prefix="/api")


def create_control_app(settings: Settings, *, engine_names: Iterable[str] | None = None) -> FastAPI:
    """The control plane app for ``settings``: migrated database, admin token, ``/api`` routes."""
    home = settings.resolved_home()
    home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    upgrade(db)
    artifacts = ArtifactStore.from_settings(settings)  # also removes interrupted uploads
    plane = ControlPlane(db, artifacts, engine_names=engine_names, max_replicas=settings.stats_max_replicas)
    plane.ensure_admin_token(settings.token_file())
    if settings.replica_token:  # Kubernetes: the replicas' token, from a Secret
        role = plane.tokens.register(settings.replica_token, "replica", REPLICA_TOKEN_NAME, replace=True)
        if role != "replica":
            log.warning("MODELYARD_REPLICA_TOKEN is an admin token: replicas holding it can change anything")
    plane.ensure_service(settings.service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(title="modelyard control plane", lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.artifacts = artifacts
    app.state.plane = plane
    app.state.registry = plane.registry
    router = create_router(
        plane,
        require_token_for_reads=settings.require_token_for_reads,
        max_artifact_bytes=settings.max_artifact_bytes,
        anonymous_long_polls=settings.anonymous_long_polls,
    )
    app.include_router(router, prefix="/api")
    _include_monitoring(app, plane, settings)
    _include_traffic(app, plane, settings)
    setattr(app.state, MAX_BODY_STATE, settings.control_max_body_bytes)  # read by GuardedRoute
    from modelyard.control.metrics_routes import include_control_metrics

    include_control_metrics(app, plane, settings)  # GET /metrics, API request counts
    install_error_handlers(app)
    auth = Auth(plane, require_token_for_reads=settings.require_token_for_reads)
    describe_api(app, auth, engine_names=sorted(plane.engine_names))
    return app
