"""The built-in web dashboard: ``GET /ui`` on the control plane, read-only.

Static files (``static/``: plain HTML, JS and CSS, committed, no build step) and two JSON
routes the page polls: ``/ui/api/overview`` (services, endpoints with engines and per-replica
state, canary splits, auto-deploy rules with the versions they deployed, metric rules,
models) and ``/ui/api/live`` (request rate, error rate and p50/p99 per endpoint version, from the
statistics replicas push — no Prometheus needed). Both honour the read policy: with
``require_token_for_reads`` the page asks for a token and sends it as a bearer header.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from modelyard.control.auth import Auth
from modelyard.control.autodeploy import AutoDeploy
from modelyard.control.monitoring import Monitoring
from modelyard.control.plane import ControlPlane
from modelyard.errors import NotFound
from modelyard.registry import ModelFilter

STATIC = Path(__file__).with_name("static")
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
MODELS_SHOWN = 200


def _auto_deploy_rules(autodeploy: AutoDeploy | None, service: str) -> list[dict[str, Any]]:
    """The service's auto-deploy rules, or [] when the app runs without the traffic routes."""
    if autodeploy is None:
        return []
    return [
        rule.model_dump(mode="json", exclude={"options", "auxiliary", "created_at"})
        for rule in autodeploy.list_rules(service)
    ]


def overview(
    plane: ControlPlane, monitoring: Monitoring, service: str, autodeploy: AutoDeploy | None = None
) -> dict[str, Any]:
    services = [s.model_dump(mode="json") for s in plane.list_services()]
    names = [s["name"] for s in services]
    if service not in names:
        if services and service == "":
            service = names[0]
        else:
            raise NotFound(f"service {service!r} not found")
    config = plane.render_config(service)
    status = plane.service_status(service)
    states: dict[str, list[dict[str, Any]]] = {}
    for replica in status.replicas:
        for ep in replica.endpoints:
            states.setdefault(ep.key, []).append(
                {"replica": replica.id, "state": ep.state, "error": ep.error, "revision": replica.revision}
            )
    endpoints = []
    for ec in config.endpoints:
        endpoints.append(
            {
                "key": ec.key,
                "endpoint": ec.endpoint,
                "version": ec.version,
                "engine": ec.engine,
                "model": ec.model.model_dump(mode="json", include={"id", "name", "project", "version"})
                if ec.model
                else None,
                "preprocess": ec.preprocess.filename if ec.preprocess else None,
                "states": states.get(ec.key, []),
            }
        )
    models = plane.registry.list(ModelFilter(limit=MODELS_SHOWN))
    return {
        "time": time.time(),
        "services": services,
        "service": service,
        "revision": status.revision,
        "replicas": [
            {"id": r.id, "revision": r.revision, "updated_at": r.updated_at} for r in status.replicas
        ],
        "endpoints": endpoints,
        "canaries": [c.model_dump(mode="json") for c in config.canaries],
        "auto_deploy": _auto_deploy_rules(autodeploy, service),
        "metric_rules": [r.model_dump(mode="json") for r in config.metrics],
        "models": [
            m.model_dump(
                mode="json", include={"id", "name", "project", "version", "framework", "published", "tags"}
            )
            for m in models
        ],
    }


def create_dashboard_router(plane: ControlPlane, monitoring: Monitoring, auth: Auth) -> APIRouter:
    read = [Depends(auth.read())]
    router = APIRouter(route_class=APIRoute)
    index = (STATIC / "index.html").read_bytes()

    @router.get("/ui", include_in_schema=False)
    @router.get("/ui/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(index, headers={"cache-control": "no-cache"})

    @router.get("/ui/static/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFound(f"no dashboard asset {name!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    @router.get("/ui/api/overview", dependencies=read)
    async def get_overview(request: Request, service: str = Query(default="")) -> dict[str, Any]:
        # the traffic routes put the rules' owner on app.state (built after this router)
        autodeploy = getattr(request.app.state, "autodeploy", None)
        return await run_in_threadpool(overview, plane, monitoring, service, autodeploy)

    @router.get("/ui/api/live", dependencies=read)
    async def get_live(service: str) -> dict[str, Any]:
        answer = await run_in_threadpool(monitoring.live, service)
        answer["time"] = time.time()
        return answer

    return router
