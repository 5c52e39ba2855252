"""The monitoring routes under ``/api``: custom statistics rules and replicas' live statistics.

``GET/POST /services/{s}/metrics``, ``DELETE /services/{s}/metrics/{endpoint}`` (``iris/1``,
``iris/*``), ``PUT /services/{s}/replicas/{id}/stats`` (replicas) and ``GET /services/{s}/live``
(request rate, error rate and p50/p99 per endpoint version, for the dashboard).

A statistics push is read here, after the token check, up to ``Monitoring.max_report_bytes``:
a larger one is refused with 413 from its ``Content-Length`` or as soon as the body passes the
limit, before it is parsed or stored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from modelyard.config import MetricRule
from modelyard.control.auth import Auth
from modelyard.control.guard import GuardedRoute, read_bounded
from modelyard.control.monitoring import Monitoring, StatsReport
from modelyard.control.revisions import if_match


def _stats_schema() -> dict[str, Any]:
    """StatsReport's JSON schema with its one nested model inlined, for ``/openapi.json``."""
    schema = StatsReport.model_json_schema()
    defs = schema.pop("$defs", {})
    schema["properties"]["endpoints"]["additionalProperties"] = defs["EndpointStats"]
    return schema


def create_monitoring_router(monitoring: Monitoring, auth: Auth) -> APIRouter:
    read = [Depends(auth.read())]
    admin = [Depends(auth.admin())]
    router = APIRouter(route_class=GuardedRoute)  # token checked before the body is read

    @router.get("/services/{service}/metrics", dependencies=read)
    def list_metric_rules(service: str) -> list[MetricRule]:
        return monitoring.list_rules(service)

    @router.post(
        "/services/{service}/metrics",
        dependencies=admin,
        status_code=201,
        response_model=MetricRule,
        responses={200: {"model": MetricRule, "description": "Replaced the rule of that endpoint."}},
    )
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
        dependencies=[Depends(auth.replica())],  # replica or admin tokens only
        status_code=204,
        response_class=Response,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _stats_schema()}}}
        },
    )
    async def report_stats(service: str, replica_id: str, request: Request) -> Response:
        raw = await read_bounded(
            request,
            monitoring.max_report_bytes,
            f"statistics report is over the limit of {monitoring.max_report_bytes} bytes "
            "(MODELYARD_STATS_MAX_BYTES)",
        )
        try:
            report = StatsReport.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
        await run_in_threadpool(monitoring.report_stats, service, replica_id, report)
        return Response(status_code=204)

    @router.get("/services/{service}/live", dependencies=read)
    def live(service: str) -> dict[str, Any]:
        return monitoring.live(service)

    return router
