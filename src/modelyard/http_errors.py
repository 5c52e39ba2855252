"""The one table that maps the core's error kinds to HTTP status codes.

Both HTTP surfaces (the control plane's FastAPI app and the data plane's ASGI
app) use :func:`status_for` and :func:`error_body`, so a kind means the same
status everywhere. Bodies are ``{"error": message, "kind": kind}``: the
``error`` field is what the Open Inference Protocol asks for.
"""

from __future__ import annotations

from modelyard import errors

STATUS_BY_KIND: dict[type[errors.ModelyardError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.Unprocessable: 422,
    errors.ModelLoadError: 422,
    errors.UserCodeError: 422,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


def status_for(exc: errors.ModelyardError) -> int:
    """The HTTP status of ``exc``: the entry of its nearest class in :data:`STATUS_BY_KIND`."""
    for cls in type(exc).__mro__:
        status = STATUS_BY_KIND.get(cls)
        if status is not None:
            return status
    return 500


def error_body(exc: errors.ModelyardError) -> dict[str, str]:
    """``{"error", "kind"}``, plus ``endpoint``: the version that failed, once one was routed to."""
    if exc.endpoint is not None:
        return {"error": exc.message, "kind": exc.kind, "endpoint": exc.endpoint}
    return {"error": exc.message, "kind": exc.kind}


def error_headers(exc: errors.ModelyardError) -> dict[str, str]:
    """Extra headers: ``Retry-After`` for overload and unavailability with a known wait;
    ``X-Modelyard-Endpoint`` naming the version that failed, as on a success."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    if exc.endpoint is not None:
        headers["x-modelyard-endpoint"] = exc.endpoint
    return headers
