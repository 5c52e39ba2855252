"""The monitoring routes under ``/api``: custom statistics rules and replicas' live statistics.

``GET/POST /services/{s}/metrics``, ``DELETE /services/{s}/metrics/{endpoint}`` (``iris/1``,
``iris/*``), ``PUT /services/{s}/replicas/{id}/stats`` (replicas) and ``GET /services/{s}/live``
(request rate, error rate and p50/p99 per endpoint version, for the dashboard).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from modelyard.config import MetricRule
from modelyard.control.auth import Auth
from modelyard.control.monitoring import Monitoring, StatsReport
from modelyard.control.revisions import if_match


def create_monitoring_router(monitoring: Monitoring, auth: Auth) -> APIRouter:
    read = [Depends(auth.read())]
    admin = [Depends(auth.admin())]
    router = APIRouter()

    @router.get("/services/{service}/metrics", dependencies=read)
    def list_metric_rules(service: str) -> list[MetricRule]:
        return monitoring.list_rules(service)

    @router.post("/services/{service}/metrics", dependencies=admin, status_code=201)
    def add_metric_rule(
        service: str, body: MetricRule, expected: int | None = Depends(if_match)
    ) -> JSONResponse:
        rule, created = monitoring.add_rule(service, body, expected_revision=expected)
        return JSONResponse(rule.model_dump(mode="json"), status_code=201 if created else 200)

    @router.delete(
        "/services/{service}/metrics/{endpoint:path}",
        dependencies=admin,
        status_code=204,
        response_class=Response,
    )
    def remove_metric_rule(service: str, endpoint: str, expected: int | None = Depends(if_match)) -> Response:
        monitoring.remove_rule(service, endpoint, expected_revision=expected)
        return Response(status_code=204)

    @router.put(
        "/services/{service}/replicas/{replica_id}/stats",
        dependencies=[Depends(auth.member())],
        status_code=204,
        response_class=Response,
    )
    def report_stats(service: str, replica_id: str, body: StatsReport) -> Response:
        monitoring.report_stats(service, replica_id, body)
        return Response(status_code=204)

    @router.get("/services/{service}/live", dependencies=read)
    def live(service: str) -> dict[str, Any]:
        return monitoring.live(service)

    return router
