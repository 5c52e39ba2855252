"""The ``/api`` routes: a thin translation from HTTP to :class:`ControlPlane` calls.

Blocking work (database, artifact store) runs in worker threads: plain ``def``
routes get that from FastAPI, the async ones (artifact upload, config long-poll)
hop to threads explicitly, so the event loop never waits on SQL or disk.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelyard.artifacts import check_sha256
from modelyard.control.auth import Auth
from modelyard.control.plane import ControlPlane
from modelyard.control.revisions import if_match, revision_headers
from modelyard.control.schemas import (
    Endpoint,
    EndpointPatch,
    EndpointSpec,
    ReplicaReport,
    Service,
    ServiceCreate,
    ServiceStatus,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from modelyard.control.watch import RevisionWatch
from modelyard.errors import BadRequest
from modelyard.registry import Model, ModelCreate, ModelFilter, TagsChange

MAX_WAIT_S = 60.0


def _no_content() -> Response:
    return Response(status_code=204)


def create_router(plane: ControlPlane, *, require_token_for_reads: bool = False) -> APIRouter:
    """All control plane routes (mount under ``/api``), bound to ``plane``."""
    auth = Auth(plane, require_token_for_reads=require_token_for_reads)
    read = [Depends(auth.read())]
    admin = [Depends(auth.admin())]
    member = [Depends(auth.member())]
    watch = RevisionWatch(plane.current_revision)
    plane.add_listener(watch.notify)
    router = APIRouter()

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # -- services -------------------------------------------------------------

    @router.get("/services", dependencies=read)
    def list_services() -> list[Service]:
        return plane.list_services()

    @router.post("/services", dependencies=admin, status_code=201)
    def create_service(body: ServiceCreate) -> Service:
        return plane.create_service(body.name, body.description)

    @router.get("/services/{name}", dependencies=read)
    def get_service(name: str) -> Service:
        return plane.get_service(name)

    @router.delete("/services/{name}", dependencies=admin, status_code=204, response_class=Response)
    def delete_service(name: str, expected: int | None = Depends(if_match)) -> Response:
        plane.delete_service(name, expected_revision=expected)
        return _no_content()

    # -- artifacts --------------------------------------------------------------

    @router.post("/artifacts", dependencies=admin, status_code=201)
    async def upload_artifact(request: Request, sha256: str | None = Query(default=None)) -> dict[str, Any]:
        """Stream the body into the store chunk by chunk; ``sha256`` (optional) is verified."""
        writer = await run_in_threadpool(plane.artifacts.writer)
        try:
            async for chunk in request.stream():
                if chunk:
                    await run_in_threadpool(writer.write, chunk)
            sha, size = await run_in_threadpool(writer.commit)
        except BaseException:
            await run_in_threadpool(writer.abort)
            raise
        await run_in_threadpool(plane.registry.record_artifact, sha, size)
        if sha256 is not None and sha256.lower() != sha:
            raise BadRequest(f"artifact upload: expected sha256 {sha256}, received bytes hash to {sha}")
        return {"sha256": sha, "size": size}

    @router.get("/artifacts/{sha256}", dependencies=member)
    def download_artifact(sha256: str) -> StreamingResponse:
        check_sha256(sha256)
        size = plane.artifacts.size(sha256)
        return StreamingResponse(
            plane.artifacts.iter_bytes(sha256),
            media_type="application/octet-stream",
            headers={"content-length": str(size), "etag": f'"{sha256}"'},
        )

    # -- models ------------------------------------------------------------------

    @router.post("/models", dependencies=admin, status_code=201)
    def create_model(body: ModelCreate) -> Model:
        return plane.registry.create(body)

    @router.get("/models", dependencies=read)
    def list_models(
        name: str | None = None,
        project: str | None = None,
        framework: str | None = None,
        tags: list[str] = Query(default=[]),
        published: bool | None = None,
        limit: int | None = Query(default=None, ge=1),
    ) -> list[Model]:
        flt = ModelFilter(
            name=name, project=project, framework=framework, tags=tags, published=published, limit=limit
        )
        return plane.registry.list(flt)

    @router.get("/models/{model_id}", dependencies=read)
    def get_model(model_id: str) -> Model:
        return plane.registry.get(model_id)

    @router.post("/models/{model_id}/publish", dependencies=admin)
    def publish_model(model_id: str) -> Model:
        return plane.registry.publish(model_id)

    @router.post("/models/{model_id}/tags", dependencies=admin)
    def change_tags(model_id: str, body: TagsChange) -> Model:
        return plane.registry.change_tags(model_id, body)

    @router.delete("/models/{model_id}", dependencies=admin, status_code=204, response_class=Response)
    def remove_model(model_id: str) -> Response:
        plane.registry.remove(model_id)
        return _no_content()

    # -- endpoints ----------------------------------------------------------------

    @router.get("/services/{service}/endpoints", dependencies=read)
    def list_endpoints(service: str, response: Response) -> list[Endpoint]:
        endpoints, revision = plane.list_endpoints_at(service)
        response.headers.update(revision_headers(revision))
        return endpoints

    @router.post("/services/{service}/endpoints", dependencies=admin, status_code=201)
    def add_endpoint(
        service: str, body: EndpointSpec, expected: int | None = Depends(if_match)
    ) -> JSONResponse:
        endpoint, created = plane.add_endpoint(service, body, expected_revision=expected)
        return JSONResponse(endpoint.model_dump(mode="json"), status_code=201 if created else 200)

    @router.get("/services/{service}/endpoints/{key:path}", dependencies=read)
    def get_endpoint(service: str, key: str, response: Response) -> Endpoint:
        endpoint, revision = plane.get_endpoint_at(service, key)
        response.headers.update(revision_headers(revision))
        return endpoint

    @router.patch("/services/{service}/endpoints/{key:path}", dependencies=admin)
    def update_endpoint(
        service: str, key: str, body: EndpointPatch, expected: int | None = Depends(if_match)
    ) -> Endpoint:
        return plane.update_endpoint(service, key, body, expected_revision=expected)

    @router.delete(
        "/services/{service}/endpoints/{key:path}",
        dependencies=admin,
        status_code=204,
        response_class=Response,
    )
    def remove_endpoint(service: str, key: str, expected: int | None = Depends(if_match)) -> Response:
        plane.remove_endpoint(service, key, expected_revision=expected)
        return _no_content()

    # -- configuration (long-poll) ------------------------------------------------------

    @router.get("/services/{service}/config", dependencies=read)
    async def get_config(
        request: Request,
        service: str,
        after: int | None = Query(default=None),
        wait: float = Query(default=0.0, ge=0.0),
    ) -> Response:
        """The ServiceConfig once its revision differs from ``after``; 304 after ``wait`` s otherwise."""
        if after is not None:
            found = await watch.wait(service, after, min(wait, MAX_WAIT_S), request.is_disconnected)
            if found is None:
                return Response(status_code=304, headers={"x-modelyard-revision": str(after)})
        config = await run_in_threadpool(plane.render_config, service)
        return JSONResponse(
            config.model_dump(mode="json"), headers={"x-modelyard-revision": str(config.revision)}
        )

    # -- replicas ----------------------------------------------------------------------

    @router.put(
        "/services/{service}/replicas/{replica_id}",
        dependencies=member,
        status_code=204,
        response_class=Response,
    )
    def report_replica(service: str, replica_id: str, body: ReplicaReport) -> Response:
        plane.report_replica(service, replica_id, body)
        return _no_content()

    @router.get("/services/{service}/status", dependencies=read)
    def service_status(service: str) -> ServiceStatus:
        return plane.service_status(service)

    # -- tokens -------------------------------------------------------------------------

    @router.post("/tokens", dependencies=admin, status_code=201)
    def create_token(body: TokenCreate) -> TokenCreated:
        return plane.create_token(body.name, body.role)

    @router.get("/tokens", dependencies=admin)
    def list_tokens() -> list[TokenInfo]:
        return plane.list_tokens()

    @router.delete("/tokens/{name}", dependencies=admin, status_code=204, response_class=Response)
    def revoke_token(name: str) -> Response:
        plane.revoke_token(name)
        return _no_content()

    return router
