"""The ``/api`` routes: a thin translation from HTTP to :class:`ControlPlane` calls.

Blocking work (database, artifact store) runs in worker threads: plain ``def``
routes get that from FastAPI, the async ones (artifact upload, config long-poll)
hop to threads explicitly, so the event loop never waits on SQL or disk.

The token is checked before a body is read (:mod:`modelyard.control.guard`); what the
OpenAPI document says about errors and security is added in :mod:`modelyard.control.openapi`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelyard.artifacts import SHA256_RE, check_sha256
from modelyard.config import ServiceConfig
from modelyard.control.auth import Auth
from modelyard.control.endpoints import redact, redact_config
from modelyard.control.guard import GuardedRoute, declared_length
from modelyard.control.plane import ControlPlane
from modelyard.control.revisions import REVISION_HEADER, if_match, revision_headers
from modelyard.control.schemas import (
    NAME_PATTERN,
    Endpoint,
    EndpointPatch,
    EndpointSpec,
    ReplicaReport,
    Role,
    Service,
    ServiceCreate,
    ServiceStatus,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from modelyard.control.watch import RevisionWatch
from modelyard.errors import Overloaded, PayloadTooLarge
from modelyard.registry import Model, ModelCreate, ModelFilter, TagsChange
from modelyard.settings import Settings

MAX_WAIT_S = 60.0
DEFAULT_MAX_ARTIFACT_BYTES: int = Settings.model_fields["max_artifact_bytes"].default
DEFAULT_ANONYMOUS_LONG_POLLS: int = Settings.model_fields["anonymous_long_polls"].default
KEY_PATTERN = f"^{NAME_PATTERN.strip('^$')}(/{NAME_PATTERN.strip('^$')})?$"
"""An endpoint version's key: ``iris`` or ``iris/1``."""

ServiceName = Annotated[str, Path(pattern=NAME_PATTERN, description="A service name.")]
EndpointKey = Annotated[
    str, Path(pattern=KEY_PATTERN, description="`endpoint/version`, or `endpoint` for the unversioned one.")
]
Sha256 = Annotated[str, Path(pattern=SHA256_RE.pattern, description="64 lowercase hex digits.")]
ReplicaId = Annotated[str, Path(min_length=1, max_length=256)]
Name = Annotated[str, Path(pattern=NAME_PATTERN)]
"""A token, canary or auto-deploy rule name."""
BINARY = {"schema": {"type": "string", "format": "binary"}}
_REVISION = {REVISION_HEADER: {"description": "The service's revision.", "schema": {"type": "integer"}}}


class ArtifactStored(BaseModel):
    sha256: str
    size: int


def _no_content() -> Response:
    return Response(status_code=204)


def create_router(
    plane: ControlPlane,
    *,
    require_token_for_reads: bool = False,
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    anonymous_long_polls: int = DEFAULT_ANONYMOUS_LONG_POLLS,
) -> APIRouter:
    """All control plane routes (mount under ``/api``), bound to ``plane``."""
    auth = Auth(plane, require_token_for_reads=require_token_for_reads)
    read = [Depends(auth.read())]
    admin = [Depends(auth.admin())]
    member = [Depends(auth.member())]
    replica = [Depends(auth.replica())]
    viewer = auth.read()  # as a parameter: the caller's role, None when anonymous
    watch = RevisionWatch(plane.current_revision)
    plane.add_listener(watch.notify)
    anonymous_waiting = 0
    router = APIRouter(route_class=GuardedRoute)

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
    def get_service(name: ServiceName) -> Service:
        return plane.get_service(name)

    @router.delete("/services/{name}", dependencies=admin, status_code=204, response_class=Response)
    def delete_service(name: ServiceName, expected: int | None = Depends(if_match)) -> Response:
        plane.delete_service(name, expected_revision=expected)
        return _no_content()

    # -- artifacts --------------------------------------------------------------

    @router.post(
        "/artifacts",
        dependencies=admin,
        status_code=201,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}},
    )
    async def upload_artifact(
        request: Request,
        sha256: str | None = Query(default=None, pattern=SHA256_RE.pattern),
    ) -> ArtifactStored:
        """Stream the body to the store chunk by chunk (at most ``max_artifact_bytes``);
        ``sha256`` (optional) is verified."""
        too_large = PayloadTooLarge(
            f"artifact is larger than the limit of {max_artifact_bytes} bytes (MODELYARD_MAX_ARTIFACT_BYTES)"
        )
        length = declared_length(request.headers)
        if length is not None and length > max_artifact_bytes:
            raise too_large
        writer = await run_in_threadpool(plane.artifacts.writer)
        try:
            async for chunk in request.stream():
                if chunk:
                    if writer.size + len(chunk) > max_artifact_bytes:
                        raise too_large
                    await run_in_threadpool(writer.write, chunk)
            sha, size = await run_in_threadpool(writer.commit, sha256)  # other bytes: 400, not stored
        except BaseException:
            await run_in_threadpool(writer.abort)
            raise
        await run_in_threadpool(plane.registry.record_artifact, sha, size)
        return ArtifactStored(sha256=sha, size=size)

    @router.get(
        "/artifacts/{sha256}",
        dependencies=member,
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "The artifact's bytes.",
                "content": {"application/octet-stream": BINARY},
                "headers": {
                    "content-length": {"schema": {"type": "integer"}},
                    "etag": {"description": "The sha256, quoted.", "schema": {"type": "string"}},
                },
            }
        },
    )
    def download_artifact(sha256: Sha256) -> StreamingResponse:
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

    @router.get(
        "/services/{service}/endpoints",
        dependencies=read,
        responses={200: {"headers": {**_REVISION, "etag": {"schema": {"type": "string"}}}}},
    )
    def list_endpoints(
        service: ServiceName, response: Response, role: Role | None = Depends(viewer)
    ) -> list[Endpoint]:
        endpoints, revision = plane.list_endpoints_at(service)
        response.headers.update(revision_headers(revision))
        return endpoints if role else [redact(e) for e in endpoints]

    @router.post(
        "/services/{service}/endpoints",
        dependencies=admin,
        status_code=201,
        response_model=Endpoint,
        responses={200: {"model": Endpoint, "description": "Replaced the same endpoint version."}},
    )
    def add_endpoint(
        service: ServiceName, body: EndpointSpec, expected: int | None = Depends(if_match)
    ) -> JSONResponse:
        endpoint, created = plane.add_endpoint(service, body, expected_revision=expected)
        return JSONResponse(endpoint.model_dump(mode="json"), status_code=201 if created else 200)

    @router.get(
        "/services/{service}/endpoints/{key:path}",
        dependencies=read,
        responses={200: {"headers": {**_REVISION, "etag": {"schema": {"type": "string"}}}}},
    )
    def get_endpoint(
        service: ServiceName, key: EndpointKey, response: Response, role: Role | None = Depends(viewer)
    ) -> Endpoint:
        endpoint, revision = plane.get_endpoint_at(service, key)
        response.headers.update(revision_headers(revision))
        return endpoint if role else redact(endpoint)

    @router.patch("/services/{service}/endpoints/{key:path}", dependencies=admin)
    def update_endpoint(
        service: ServiceName, key: EndpointKey, body: EndpointPatch, expected: int | None = Depends(if_match)
    ) -> Endpoint:
        return plane.update_endpoint(service, key, body, expected_revision=expected)

    @router.delete(
        "/services/{service}/endpoints/{key:path}",
        dependencies=admin,
        status_code=204,
        response_class=Response,
    )
    def remove_endpoint(
        service: ServiceName, key: EndpointKey, expected: int | None = Depends(if_match)
    ) -> Response:
        plane.remove_endpoint(service, key, expected_revision=expected)
        return _no_content()

    # -- configuration (long-poll) ------------------------------------------------------

    @router.get(
        "/services/{service}/config",
        response_model=ServiceConfig,
        responses={
            200: {"headers": _REVISION},
            304: {"description": "No change within `wait` seconds.", "headers": _REVISION},
            503: {"description": "Too many long-polls without a token wait already; retry."},
        },
    )
    async def get_config(
        request: Request,
        service: ServiceName,
        after: int | None = Query(default=None, ge=0, le=2**62),
        wait: float = Query(default=0.0, ge=0.0, allow_inf_nan=False),
        role: Role | None = Depends(viewer),
    ) -> Response:
        """The ServiceConfig once its revision differs from ``after``; 304 after ``wait`` s otherwise.

        Anonymous callers see option values redacted, and at most ``anonymous_long_polls`` of
        them wait at once (503 with Retry-After beyond): a caller without a token must not be
        able to hold an unbounded number of connections.
        """
        nonlocal anonymous_waiting
        if after is not None:
            timeout = min(wait, MAX_WAIT_S)
            anonymous = role is None and timeout > 0
            if anonymous:
                if anonymous_waiting >= anonymous_long_polls:
                    raise Overloaded(
                        f"{anonymous_waiting} long-polls without a token are waiting already (the limit); "
                        "send a bearer token, or retry",
                        retry_after=1,
                    )
                anonymous_waiting += 1
            try:
                found = await watch.wait(service, after, timeout, request.is_disconnected)
            finally:
                if anonymous:
                    anonymous_waiting -= 1
            if found is None:
                return Response(status_code=304, headers={REVISION_HEADER: str(after)})
        config = await run_in_threadpool(plane.render_config, service)
        if role is None:
            config = redact_config(config)
        return JSONResponse(config.model_dump(mode="json"), headers={REVISION_HEADER: str(config.revision)})

    # -- replicas ----------------------------------------------------------------------

    @router.put(
        "/services/{service}/replicas/{replica_id}",
        dependencies=replica,
        status_code=204,
        response_class=Response,
    )
    def report_replica(service: ServiceName, replica_id: ReplicaId, body: ReplicaReport) -> Response:
        plane.report_replica(service, replica_id, body)
        return _no_content()

    @router.get("/services/{service}/status", dependencies=read)
    def service_status(service: ServiceName) -> ServiceStatus:
        return plane.service_status(service)

    # -- tokens -------------------------------------------------------------------------

    @router.post("/tokens", dependencies=admin, status_code=201)
    def create_token(body: TokenCreate) -> TokenCreated:
        return plane.create_token(body.name, body.role)

    @router.get("/tokens", dependencies=admin)
    def list_tokens() -> list[TokenInfo]:
        return plane.list_tokens()

    @router.delete("/tokens/{name}", dependencies=admin, status_code=204, response_class=Response)
    def revoke_token(name: Name) -> Response:
        plane.revoke_token(name)
        return _no_content()

    return router
