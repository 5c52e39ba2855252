"""``GET /metrics`` of the control plane: API traffic, service revisions, process CPU/memory.

So ``modelyard control-plane`` can be scraped like the replicas (``deploy/prometheus`` does).
Three parts:

* ``modelyard_control_api_requests_total{method,route,code}`` and
  ``modelyard_control_api_request_duration_seconds{method,route}``: every HTTP call, labelled
  by the matched route's template (``/api/services/{name}``), never the raw path, so random
  URLs cannot grow the number of series (unmatched paths are ``route="unmatched"``, methods
  other than the standard ones ``method="other"``);
* ``modelyard_control_service_revision{service}`` and ``modelyard_control_endpoints{service}``,
  read from the database at scrape time, so every worker answers the same and a replica's
  ``modelyard_config_revision`` can be compared with the revision it should have;
* the client's process collectors (one set per live worker, labelled ``pid``, with several
  workers).

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by the composition root) the counters
live in the shared folder and a scrape sums them over workers, as on the replicas. In
``modelyard serve`` (all in one) ``/metrics`` belongs to the replica; there the API counters
join the replica's scrape when workers share the folder, and are not exported otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.control.auth import Auth
from modelyard.control.plane import ControlPlane
from modelyard.metrics import REQUEST_BUCKETS
from modelyard.metrics_labels import method_label
from modelyard.metrics_multiprocess import WorkerProcessCollector, prune_dead_workers
from modelyard.settings import Settings

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"


class ServiceCollector(Collector):
    """Revision and endpoint count per service, read from the database at scrape time."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterable[Metric]:
        revision = GaugeMetricFamily(
            "modelyard_control_service_revision",
            "Configuration revision of each service in the database (what replicas should apply).",
            labels=["service"],
        )
        endpoints = GaugeMetricFamily(
            "modelyard_control_endpoints",
            "Endpoint versions declared per service.",
            labels=["service"],
        )
        try:
            for service in self.plane.list_services():
                revision.add_metric([service.name], float(service.revision))
                config = self.plane.render_config(service.name)
                endpoints.add_metric([service.name], float(len(config.endpoints)))
        except Exception as exc:  # a database hiccup must not fail the whole scrape
            log.warning("reading services for /metrics failed: %s", exc)
            return []
        return [revision, endpoints]


class ControlMetrics:
    """The control plane's metrics registry and the middleware that counts API calls."""

    def __init__(self, plane: ControlPlane, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_control_api_requests",
            "Control plane HTTP requests, by method, route template and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelyard_control_api_request_duration_seconds",
            "Control plane HTTP request latency (long-polls of /config included).",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.services = ServiceCollector(plane)
        if multiprocess_dir is None:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            self.registry.register(self.services)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        method = method_label(method)  # any token is a method to h11: never a label as sent
        self.requests.labels(method, route, str(code)).inc()
        self.duration.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        prune_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(WorkerProcessCollector(self.multiprocess_dir))
        registry.register(self.services)
        return generate_latest(registry)


def route_template(route: Any, path: str) -> str:
    """The matched route's template with the prefix it was included under (``/api``).

    FastAPI keeps included routers nested, so ``route.path`` is relative to its router's
    prefix; the prefix is what precedes the part of ``path`` the route's pattern matches.
    """
    template = getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not template or regex is None:
        return UNMATCHED
    for cut, char in enumerate(path):
        if char == "/" and regex.fullmatch(path[cut:]):
            return path[:cut] + template
    return str(template)


class ApiMetricsMiddleware:
    """Counts each HTTP request by its route template once the answer is sent (or failed)."""

    def __init__(self, app: ASGIApp, metrics: ControlMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            try:
                template = route_template(scope.get("route"), scope.get("path", ""))
                self.metrics.observe(scope.get("method", ""), template, code, perf_counter() - started)
            except Exception:  # recording never fails a request
                log.exception("counting a control plane request failed")


def include_control_metrics(app: FastAPI, plane: ControlPlane, settings: Settings) -> ControlMetrics:
    """Add ``GET /metrics`` (read policy as ``/api``) and the request-counting middleware."""
    shared = settings.metrics_dir if settings.several_processes() else None
    metrics = ControlMetrics(plane, str(shared) if shared else None)
    auth = Auth(plane, require_token_for_reads=settings.require_token_for_reads)
    router = APIRouter()

    @router.get("/metrics", dependencies=[Depends(auth.read())], include_in_schema=False)
    async def get_metrics() -> Response:
        body = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.add_middleware(ApiMetricsMiddleware, metrics=metrics)
    app.state.control_metrics = metrics
    return metrics
