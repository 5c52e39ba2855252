"""The control plane's OpenAPI document says what the API really answers.

FastAPI documents a route's success answer and a 422 of its own shape; the control plane
answers errors as ``{"error", "kind"}`` (:class:`~modelyard.control.schemas.ErrorBody`) and,
before a route runs, 401/403 from the token check and 413 from the body limit
(:mod:`modelyard.control.guard`). :func:`describe_api` adds those to every operation from
the same facts the server acts on (the route's auth level, whether it takes a body, path
parameters, ``If-Match``), plus the bearer security scheme per operation (optional on open
reads) and the known engine names as an enum on request bodies, so a client generated from
the document (or a fuzzer such as schemathesis) sees the same contract the server enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from modelyard.control.auth import Auth
from modelyard.control.guard import route_level
from modelyard.control.schemas import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DESCRIPTIONS = {
    400: "Bad request: a malformed header or argument, an unknown engine, a sha256 that does not match.",
    401: "No bearer token.",
    403: "The token is not valid, or its role may not make this call.",
    404: "A named thing (service, endpoint, model, artifact, token) does not exist.",
    409: "Conflicts with the current state (name taken, in use, or `If-Match` revision is stale).",
    413: "The body is over the limit (checked before it is read).",
    422: "The request does not match the schema; `error` lists each bad field.",
    503: "Busy now; retry after `Retry-After` seconds.",
}
ROLE_OF_LEVEL = {"token": "any valid", "replica": "a `replica` or `admin`", "admin": "an `admin`"}
OPEN_NOTE = "Open to callers without a token; they see `options`/`auxiliary` values redacted."
ENGINE_BODIES = ("EndpointSpec", "EndpointPatch", "AutoDeploySpec", "AutoDeployPatch")


def _error_statuses(route: APIRoute, method: str, auth: Auth) -> set[int]:
    level = route_level(route)
    dependant = route.dependant
    params = dependant.path_params + dependant.query_params + dependant.header_params
    has_body = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
    statuses: set[int] = set()
    if params or route.body_field is not None:
        statuses.add(422)
    if level is not None and auth.needs_token(level):
        statuses |= {401, 403}
    if dependant.path_params or has_body or any(p.name == "service" for p in dependant.query_params):
        statuses.add(404)
    if has_body:
        statuses |= {400, 413}
    if method in WRITES:
        statuses |= {400, 409}
    if any(p.alias == "If-Match" for p in dependant.header_params):
        statuses |= {400, 409}
    return statuses


def _security(route: APIRoute, auth: Auth) -> tuple[list[dict[str, list[str]]], str | None]:
    level = route_level(route)
    if level is None:
        return [], None
    if not auth.needs_token(level):
        return [{}, {"bearer": []}], OPEN_NOTE
    role = ROLE_OF_LEVEL.get(level, "any valid")
    return [{"bearer": []}], f"Needs {role} token."


def _engine_enum(components: dict[str, Any], engines: list[str]) -> None:
    for name in ENGINE_BODIES:
        engine = components.get(name, {}).get("properties", {}).get("engine")
        if engine is None:
            continue
        for variant in engine.get("anyOf", [engine]):
            if variant.get("type") == "string":
                variant["enum"] = engines


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (newer FastAPI keeps them nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from api_routes(nested.routes)


def _route_of(routes: list[APIRoute], path: str, method: str) -> APIRoute | None:
    """The route documented at ``path`` (its own path, or that path under a prefix)."""
    candidates = [r for r in routes if method in (r.methods or ()) and path.endswith(r.path_format)]
    return max(candidates, key=lambda r: len(r.path_format), default=None)


def build_schema(app: FastAPI, auth: Auth, engines: list[str]) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "From `modelyard token create`."}
    }
    _engine_enum(schemas, engines)
    routes = [r for r in api_routes(app.routes) if r.include_in_schema]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            route = _route_of(routes, path, method.upper())
            if route is None:
                continue
            method = method.upper()
            security, note = _security(route, auth)
            responses = operation.setdefault("responses", {})
            for status in _error_statuses(route, method, auth) | {int(s) for s in responses if int(s) >= 400}:
                entry = responses.setdefault(str(status), {})
                if status == 422 or "content" not in entry:
                    entry["content"] = {"application/json": {"schema": ERROR_REF}}
                entry["description"] = entry.get("description") or DESCRIPTIONS.get(status, "Error.")
                if status == 422:
                    entry["description"] = DESCRIPTIONS[422]
            operation["security"] = security
            if note:
                operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
    return schema


def describe_api(app: FastAPI, auth: Auth, *, engine_names: Iterable[str]) -> None:
    """Make ``app.openapi()`` (``/openapi.json``, ``/docs``) return the completed document."""
    engines = sorted(engine_names)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, auth, engines)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
