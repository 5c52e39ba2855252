"""The one table that maps the core's error kinds to gRPC status codes.

The gRPC twin of :mod:`modelyard.http_errors`, used by the Open Inference
Protocol's gRPC front (:mod:`modelyard.serving.oip_grpc`), so a kind means the
same thing on both transports: what is a 400 over HTTP is ``INVALID_ARGUMENT``
here, a 404 ``NOT_FOUND``, a 503 ``UNAVAILABLE``. Overload (a full batching
queue) is ``UNAVAILABLE`` too, as Triton answers it, because gRPC clients and
retry policies treat that code as "transient, retry with backoff"; the wait
goes in the ``retry-after`` trailing metadata, as HTTP's ``Retry-After``
header. ``RESOURCE_EXHAUSTED`` is what gRPC itself answers for a message over
the size limit, so :class:`~modelyard.errors.PayloadTooLarge` maps to it.

Imported only where grpcio is installed (the ``grpc`` / ``triton`` extras).
"""

from __future__ import annotations

import grpc

from modelyard import errors

CODE_BY_KIND: dict[type[errors.ModelyardError], grpc.StatusCode] = {
    errors.BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RevisionConflict: grpc.StatusCode.ABORTED,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unprocessable: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UserCodeError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(exc: errors.ModelyardError) -> grpc.StatusCode:
    """The gRPC code of ``exc``: the entry of its nearest class in :data:`CODE_BY_KIND`."""
    for cls in type(exc).__mro__:
        code = CODE_BY_KIND.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def error_metadata(exc: errors.ModelyardError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata: the error's ``modelyard-kind`` (the HTTP body's ``kind``),
    ``retry-after`` (seconds) for overload and unavailability with a known wait, and
    ``modelyard-endpoint``, the version that failed, once one was routed to."""
    metadata = [("modelyard-kind", exc.kind)]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        metadata.append(("retry-after", str(max(1, round(retry_after)))))
    if exc.endpoint is not None:
        metadata.append(("modelyard-endpoint", exc.endpoint))
    return tuple(metadata)
