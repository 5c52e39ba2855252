"""The traffic routes under ``/api``: canary / A-B routing endpoints and auto-deploy rules.

``GET/POST /services/{s}/canaries``, ``GET/DELETE /services/{s}/canaries/{name}``;
``GET/POST /services/{s}/auto-deploy``, ``GET/PATCH/DELETE /services/{s}/auto-deploy/{endpoint}``
(``DELETE ...?keep_endpoints=true`` leaves the deployed versions in place). Writes take
``If-Match: <revision>`` like every service-scoped write. Rules read without a token show their
``options``/``auxiliary`` values redacted, as endpoints do.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from modelyard.config import CanaryConfig
from modelyard.control.auth import Auth
from modelyard.control.autodeploy import AutoDeploy, AutoDeployPatch, AutoDeployRule, AutoDeploySpec
from modelyard.control.canary import Canaries, CanaryInfo
from modelyard.control.endpoints import redact
from modelyard.control.guard import GuardedRoute
from modelyard.control.revisions import if_match
from modelyard.control.routes import Name, ServiceName
from modelyard.control.schemas import Role


def create_traffic_router(canaries: Canaries, autodeploy: AutoDeploy, auth: Auth) -> APIRouter:
    read = [Depends(auth.read())]
    admin = [Depends(auth.admin())]
    viewer = auth.read()  # as a parameter: the caller's role, None when anonymous (options redacted)
    router = APIRouter(route_class=GuardedRoute)

    # -- canaries ---------------------------------------------------------------------------
    @router.get("/services/{service}/canaries", dependencies=read)
    def list_canaries(service: ServiceName) -> list[CanaryInfo]:
        return canaries.list_canaries(service)

    @router.post(
        "/services/{service}/canaries",
        dependencies=admin,
        status_code=201,
        response_model=CanaryInfo,
        responses={200: {"model": CanaryInfo, "description": "Replaced the canary of that name."}},
    )
    def add_canary(
        service: ServiceName, body: CanaryConfig, expected: int | None = Depends(if_match)
    ) -> JSONResponse:
        info, created = canaries.add(service, body, expected_revision=expected)
        return JSONResponse(info.model_dump(mode="json"), status_code=201 if created else 200)

    @router.get("/services/{service}/canaries/{name}", dependencies=read)
    def get_canary(service: ServiceName, name: Name) -> CanaryInfo:
        return canaries.get(service, name)

    @router.delete(
        "/services/{service}/canaries/{name}", dependencies=admin, status_code=204, response_class=Response
    )
    def remove_canary(service: ServiceName, name: Name, expected: int | None = Depends(if_match)) -> Response:
        canaries.remove(service, name, expected_revision=expected)
        return Response(status_code=204)

    # -- auto-deploy ------------------------------------------------------------------------
    @router.get("/services/{service}/auto-deploy", dependencies=read)
    def list_rules(service: ServiceName, role: Role | None = Depends(viewer)) -> list[AutoDeployRule]:
        rules = autodeploy.list_rules(service)
        return rules if role else [redact(r) for r in rules]

    @router.post(
        "/services/{service}/auto-deploy",
        dependencies=admin,
        status_code=201,
        response_model=AutoDeployRule,
        responses={200: {"model": AutoDeployRule, "description": "Replaced the rule of that endpoint."}},
    )
    def add_rule(
        service: ServiceName, body: AutoDeploySpec, expected: int | None = Depends(if_match)
    ) -> JSONResponse:
        rule, created = autodeploy.add(service, body, expected_revision=expected)
        return JSONResponse(rule.model_dump(mode="json"), status_code=201 if created else 200)

    @router.get("/services/{service}/auto-deploy/{endpoint}", dependencies=read)
    def get_rule(service: ServiceName, endpoint: Name, role: Role | None = Depends(viewer)) -> AutoDeployRule:
        rule = autodeploy.get(service, endpoint)
        return rule if role else redact(rule)

    @router.patch("/services/{service}/auto-deploy/{endpoint}", dependencies=admin)
    def update_rule(
        service: ServiceName, endpoint: Name, body: AutoDeployPatch, expected: int | None = Depends(if_match)
    ) -> AutoDeployRule:
        return autodeploy.update(service, endpoint, body, expected_revision=expected)

    @router.delete(
        "/services/{service}/auto-deploy/{endpoint}",
        dependencies=admin,
        status_code=204,
        response_class=Response,
    )
    def remove_rule(
        service: ServiceName,
        endpoint: Name,
        keep_endpoints: bool = Query(default=False),
        expected: int | None = Depends(if_match),
    ) -> Response:
        autodeploy.remove(service, endpoint, keep_endpoints=keep_endpoints, expected_revision=expected)
        return Response(status_code=204)

    return router
