"""Check the token, then bound the body, before a route reads a byte of it.

FastAPI reads and parses a route's JSON body *before* it runs the route's dependencies, so
with the bearer-token check as a dependency a 300 MB body without a token was read and
parsed in full before the 401. :class:`GuardedRoute` (the ``route_class`` of every control
plane router) wraps each route's handler: it runs the route's
:class:`~modelyard.control.auth.Auth` check from the headers alone, and only then reads a
JSON body, at most ``Settings.control_max_body_bytes`` of it (413 on a larger
``Content-Length`` at once, or as soon as a chunked body passes the limit), checks it strictly
against the body model (no ``"1"`` or ``true`` for a number: what the OpenAPI document
says), and hands it to the route, which parses it as before.

Routes without a JSON body (artifact uploads stream their own body under
``Settings.max_artifact_bytes``; GETs and DELETEs read none) get the token check only;
unknown paths and methods (404, 405) never read the body at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from modelyard.control.auth import LEVELS, Auth, Level, auth_level, auth_of
from modelyard.errors import BadRequest, PayloadTooLarge
from modelyard.settings import Settings

DEFAULT_MAX_BODY_BYTES: int = Settings.model_fields["control_max_body_bytes"].default
MAX_BODY_STATE = "control_max_body_bytes"
"""``app.state`` attribute with the app's body limit (``create_control_app`` sets it)."""

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def route_auth(route: APIRoute) -> tuple[Auth, Level] | None:
    """The strictest :class:`Auth` dependency among ``route``'s (listed or parameters)."""
    found: list[tuple[Auth, Level]] = []
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        level, auth = auth_level(dependant.call), auth_of(dependant.call)
        if level is not None and auth is not None:
            found.append((auth, level))
        pending.extend(dependant.dependencies)
    return max(found, key=lambda pair: LEVELS.index(pair[1])) if found else None


def route_level(route: APIRoute) -> Level | None:
    found = route_auth(route)
    return found[1] if found else None


def single_valued_query(route: APIRoute) -> list[str]:
    """The query parameters of ``route`` that take one value (FastAPI would keep the last of several)."""
    return [p.alias for p in route.dependant.query_params if not _is_sequence(p.field_info.annotation)]


def _is_sequence(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return any(get_origin(option) in (list, set, tuple, frozenset) for option in options)


def declared_length(headers: Headers) -> int | None:
    """The ``Content-Length``, None when absent; 400 when it is not a number."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):  # "²".isdigit() is true, int("²") fails
        raise BadRequest(f"Content-Length {raw!r} is not a number of bytes")
    return int(digits[:19]) if len(digits) <= 19 else 10**19


async def read_bounded(request: Request, limit: int, too_large: str | None = None) -> bytes:
    """The request's body, refused (413, ``too_large`` its message) as soon as it is known to
    exceed ``limit`` bytes: from its ``Content-Length``, or while it streams."""
    error = PayloadTooLarge(
        too_large
        or f"request body is larger than the control plane's limit of {limit} bytes "
        "(MODELYARD_CONTROL_MAX_BODY_BYTES)"
    )
    length = declared_length(request.headers)
    if length is not None and length > limit:
        raise error
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise error
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client closed the connection while sending the body") from None
    return b"".join(chunks)


def strict_json(route: APIRoute) -> TypeAdapter[Any] | None:
    """A strict validator of ``route``'s JSON body model, if it has one.

    FastAPI validates bodies in pydantic's lax mode, where ``"1"`` and ``true`` pass for the
    number 1: more than the OpenAPI document (and so a generated client) allows. Checking the
    parsed JSON strictly first makes the server accept what it documents. (Strict validation
    of Python objects wants Enum members for Enum fields: body models use ``Literal``.)
    """
    annotation = getattr(getattr(route.body_field, "field_info", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return TypeAdapter(annotation)
    return None


def _integral_floats_as_ints(value: Any) -> Any:
    """``3.0`` → ``3`` throughout: JSON Schema counts it an integer, pydantic's strict mode does not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    return value


def _check_strictly(adapter: TypeAdapter[Any], body: bytes, headers: Headers) -> None:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if not body or not (content_type == "application/json" or content_type.endswith("+json")):
        return  # FastAPI's own handling answers these (missing body, other media types)
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # FastAPI answers malformed JSON itself (422 json_invalid)
    try:
        adapter.validate_python(_integral_floats_as_ints(parsed), strict=True)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


class GuardedRoute(APIRoute):
    """An APIRoute whose handler checks the token, then reads a bounded body, then runs."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        found = route_auth(self)
        has_body = self.body_field is not None
        scalars = single_valued_query(self)
        if found is None and not has_body and not scalars:
            return handler
        adapter = strict_json(self) if has_body else None

        async def guarded(request: Request) -> Response:
            repeated = [(n, len(request.query_params.getlist(n))) for n in scalars]
            if any(count > 1 for _, count in repeated):
                raise RequestValidationError(
                    [
                        {"type": "repeated", "loc": ("query", name), "msg": f"takes one value, got {count}"}
                        for name, count in repeated
                        if count > 1
                    ]
                )
            if found is not None:
                auth, level = found
                await auth.check(request.scope, request.headers, level)
            if has_body:
                limit = getattr(request.app.state, MAX_BODY_STATE, DEFAULT_MAX_BODY_BYTES)
                body = await read_bounded(request, limit)
                if adapter is not None:
                    _check_strictly(adapter, body, request.headers)
                # Starlette's Request keeps a read body here; FastAPI's handler parses it from there
                request._body = body
            return await handler(request)

        return guarded
