"""The core's exception tree.

Every layer below the transports raises one of these; the HTTP layer maps the
*kind* (not the message) to a status code in one table
(:data:`modelyard.http_errors.STATUS_BY_KIND`), the queue worker writes the
message into the result, the CLI prints it. Messages name the thing that is
wrong ("endpoint 'iris/3' not found", "input 'x' expects FP32, got INT64") so
the user can act without reading a traceback.
"""

from __future__ import annotations


class ModelyardError(Exception):
    """Base of every error modelyard raises on purpose."""

    kind = "error"
    endpoint: str | None = None
    """The endpoint version that failed (``iris/2``), once a request was routed to one: error
    answers name it (``X-Modelyard-Endpoint``), so a failing canary target can be found."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(ModelyardError):
    """The request itself is malformed (bad JSON, bad gzip, bad argument)."""

    kind = "bad_request"


class InvalidInput(BadRequest):
    """A tensor or field does not match what the endpoint declares (shape, dtype, name)."""

    kind = "invalid_input"


class Unauthorized(ModelyardError):
    """No credentials where they are needed."""

    kind = "unauthorized"


class Forbidden(ModelyardError):
    """Credentials given but not accepted for this call."""

    kind = "forbidden"


class NotFound(ModelyardError):
    """A named thing (service, endpoint, model, artifact) does not exist."""

    kind = "not_found"


class Conflict(ModelyardError):
    """The call contradicts current state (name taken, model in use, stale revision)."""

    kind = "conflict"


class RevisionConflict(Conflict):
    """A write made against a service revision (``If-Match``) that is no longer current."""

    kind = "revision_conflict"

    def __init__(self, message: str, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current


class PayloadTooLarge(ModelyardError):
    """A body (or its decompressed form) is over the configured limit."""

    kind = "payload_too_large"


class Unprocessable(ModelyardError):
    """Well-formed input that the endpoint's code could not process (user code raised)."""

    kind = "unprocessable"


class Unavailable(ModelyardError):
    """The target cannot answer now: loading, failed to load, overloaded, upstream down."""

    kind = "unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    """A bounded queue is full; the client should retry after ``retry_after`` seconds."""

    kind = "overloaded"


class DeadlineExceeded(ModelyardError):
    """A request ran past its deadline (the endpoint's ``timeout_s``); its answer is abandoned."""

    kind = "deadline_exceeded"


class ModelLoadError(ModelyardError):
    """An engine could not load a model file (corrupt file, wrong framework)."""

    kind = "model_load_error"


class UserCodeError(ModelyardError):
    """The endpoint's preprocess code could not be imported or instantiated."""

    kind = "user_code_error"
