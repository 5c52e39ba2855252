"""The SDK's HTTP plumbing: one httpx client, the bearer token, and errors mapped back to kinds.

Every call of :class:`modelyard.client.Client` goes through :meth:`ApiClient._send`, so
an unreachable server, a timeout or an error answer always comes back as the
:mod:`modelyard.errors` exception of the server's ``kind`` (else of the HTTP status).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import orjson

from modelyard import errors
from modelyard.settings import Settings

_ERROR_CLASSES: tuple[type[errors.ModelyardError], ...] = (
    errors.BadRequest,
    errors.InvalidInput,
    errors.Unauthorized,
    errors.Forbidden,
    errors.NotFound,
    errors.Conflict,
    errors.RevisionConflict,
    errors.PayloadTooLarge,
    errors.Unprocessable,
    errors.Unavailable,
    errors.Overloaded,
    errors.ModelLoadError,
    errors.UserCodeError,
)
ERROR_BY_KIND: dict[str, type[errors.ModelyardError]] = {
    **{c.kind: c for c in _ERROR_CLASSES},
    "validation_error": errors.BadRequest,  # the control plane's answer to a malformed body
}
"""The server's ``{"kind"}`` → the exception the client raises (else by status)."""

_ERROR_BY_STATUS: dict[int, type[errors.ModelyardError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.Unprocessable,
    503: errors.Unavailable,
}
"""Fallback for bodies without a known ``kind`` (proxies, framework-level errors)."""


def error_from_response(response: httpx.Response) -> errors.ModelyardError:
    """The :mod:`modelyard.errors` exception that an error response stands for."""
    status = response.status_code
    message: str | None = None
    kind: str | None = None
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            message = body["error"]
            kind = body.get("kind") if isinstance(body.get("kind"), str) else None
        elif "detail" in body:  # FastAPI's own errors (request validation, unknown route)
            message = _detail_message(body["detail"])
            if status == 422:
                status = 400
    if message is None:
        text = response.text.strip()
        message = f"{response.request.method} {response.request.url.path} answered {status}"
        if text:
            message += f": {text[:500]}"
    cls = ERROR_BY_KIND.get(kind or "") or _ERROR_BY_STATUS.get(status) or errors.ModelyardError
    exc: errors.ModelyardError
    if issubclass(cls, errors.Unavailable):
        exc = cls(message, retry_after=_retry_after(response))
    else:
        exc = cls(message)
    exc.status = response.status_code  # type: ignore[attr-defined]
    return exc


def _detail_message(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                msg = str(item.get("msg", item))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "invalid request: " + "; ".join(parts)
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def revision_of(response: httpx.Response) -> int:
    value = response.headers.get("x-modelyard-revision")
    if value is None:
        raise errors.ModelyardError(
            f"{response.request.url.path} answered without x-modelyard-revision "
            "(a control plane older than the If-Match support?)"
        )
    return int(value)


def _read_token_file(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


class ApiClient:
    """A connection to one control plane (and the data plane at the same address).

    ``url`` defaults to ``Settings.url`` (``MODELYARD_URL``); ``token`` to ``Settings.token``
    (``MODELYARD_TOKEN``), then the ``<MODELYARD_HOME>/token`` file (read at each call, so a
    server that writes it on first start is picked up). ``serving_url`` is where
    :meth:`~modelyard.client.Client.infer` posts; default ``url`` (the all-in-one server serves both).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        *,
        timeout: float = 30,
        serving_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = settings if settings is not None else Settings()
        self.url = (url or settings.url).rstrip("/")
        self.serving_url = (serving_url or self.url).rstrip("/")
        self._token = token or settings.token
        self._token_source = "the token given" if token else "MODELYARD_TOKEN"
        self._token_file = settings.token_file()
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        return self._token or _read_token_file(self._token_file)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self.token
        if token:
            headers["authorization"] = f"Bearer {token}"
        return headers

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str = "the control plane",
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        base = url.split("/api/", 1)[0].split("/serve/", 1)[0]
        try:
            request = self._http.build_request(method, url, **kwargs)
            response = self._http.send(request, stream=stream)
        except httpx.ConnectError as exc:
            raise errors.Unavailable(f"cannot reach {what} at {base}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise errors.Unavailable(
                f"{what} at {base} did not answer within {self.timeout:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"cannot talk to {what} at {base}: {exc}") from exc
        if response.status_code >= 400:
            if stream:
                response.read()
                response.close()
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> errors.ModelyardError:
        exc = error_from_response(response)
        hint = None
        if isinstance(exc, errors.Unauthorized) and not self.token:
            hint = f"no token: set MODELYARD_TOKEN or put the token in {self._token_file}"
        elif isinstance(exc, errors.Unauthorized | errors.Forbidden) and self.token:
            source = self._token_source if self._token else str(self._token_file)
            hint = f"token from {source}"
        if hint:
            exc.message += f" ({hint})"
            exc.args = (exc.message,)
        return exc

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api<path>``; the decoded JSON body, or ``None`` for an empty answer."""
        return self._api_response(method, path, **kwargs)[0]

    def _api_response(
        self, method: str, path: str, *, if_revision: int | None = None, **kwargs: Any
    ) -> tuple[Any, httpx.Response]:
        """Like :meth:`_api`, with the response too; ``if_revision`` is sent as ``If-Match``."""
        headers = self._headers(kwargs.pop("headers", None))
        if if_revision is not None:
            headers["if-match"] = f'"{if_revision}"'
        if "json" in kwargs:
            headers["content-type"] = "application/json"
            kwargs["content"] = orjson.dumps(kwargs.pop("json"))
        response = self._send(method, f"{self.url}/api{path}", headers=headers, **kwargs)
        if response.status_code == 204 or not response.content:
            return None, response
        return response.json(), response
