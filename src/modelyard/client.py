"""The Python SDK for the control plane REST API (``docs/rest-api.md``) and the data plane.

Synchronous, on httpx. Every method maps to one route and returns the decoded
JSON (plain dicts and lists, shaped as the API documents them), except
:meth:`Client.get_config`, which returns the typed :class:`~modelyard.config.ServiceConfig`.
Errors come back as the :mod:`modelyard.errors` exception of the server's ``kind``::

    from modelyard import Client

    client = Client()                      # MODELYARD_URL, MODELYARD_TOKEN or <home>/token
    model = client.upload_model("model.pkl", name="iris", project="demo", framework="sklearn")
    client.add_endpoint("default", "iris", version="1", engine="sklearn", model_id=model["id"])
    client.infer("iris", "1", data={"x": [[1, 2, 3, 4]]})
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from modelyard import errors
from modelyard.client_traffic import TrafficMixin
from modelyard.config import ServiceConfig, TensorSpec, endpoint_key
from modelyard.settings import Settings

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called after every chunk of an upload or download."""

CHUNK_SIZE = 1024 * 1024
MODIFY_ATTEMPTS = 8
"""Read-modify-write attempts (:meth:`Client.modify_endpoint`) before a RevisionConflict is raised."""

EndpointChange = Callable[[dict[str, Any]], Mapping[str, Any] | None]
"""``change(current_endpoint) -> fields for update_endpoint`` (or None/{} for nothing to do)."""

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


def _revision_of(response: httpx.Response) -> int:
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


def _tensor_dicts(specs: Iterable[TensorSpec | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for spec in specs or ():
        if isinstance(spec, TensorSpec):
            out.append(spec.model_dump(mode="json", exclude_none=True))
        else:
            out.append(TensorSpec(**spec).model_dump(mode="json", exclude_none=True))
    return out


def pack_folder(folder: Path, dest: Path) -> Path:
    """Write ``folder`` as a gzipped tar at ``dest``; members are named ``<folder name>/...``.

    Ownership and times are normalised so the same content gives the same bytes (and sha256).
    """

    def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in Path(info.name).parts or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        open(dest, "wb") as raw,
        gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            tar.add(path, arcname=str(Path(folder.name) / rel), recursive=False, filter=_normalise)
    return dest


class Client(TrafficMixin):
    """A synchronous client of one control plane (and the data plane at the same address).

    ``url`` defaults to ``Settings.url`` (``MODELYARD_URL``); ``token`` to ``Settings.token``
    (``MODELYARD_TOKEN``), then the ``<MODELYARD_HOME>/token`` file (read at each call, so a
    server that writes it on first start is picked up). ``serving_url`` is where :meth:`infer`
    posts; default ``url`` (the all-in-one server serves both).
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

    def __enter__(self) -> Client:
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

    # -- health ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._api("GET", "/health")

    # -- services ----------------------------------------------------------------------------

    def create_service(self, name: str, description: str = "") -> dict[str, Any]:
        return self._api("POST", "/services", json={"name": name, "description": description})

    def list_services(self) -> list[dict[str, Any]]:
        return self._api("GET", "/services")

    def get_service(self, name: str) -> dict[str, Any]:
        return self._api("GET", f"/services/{name}")

    def remove_service(self, name: str, *, if_revision: int | None = None) -> None:
        """Delete a service; with ``if_revision``, only if it is still at that revision."""
        self._api_response("DELETE", f"/services/{name}", if_revision=if_revision)

    # -- artifacts ---------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike[str], progress: Progress | None = None) -> dict[str, Any]:
        """Stream a file (or a folder, packed as ``<name>.tar.gz`` first) to the artifact store.

        Returns ``{"sha256", "size", "filename", "kind"}``: an artifact reference as endpoints
        and models take it.
        """
        source = Path(path).expanduser()
        if source.is_dir():
            with tempfile.TemporaryDirectory(prefix="modelyard-pack-") as tmp:
                folder = source.resolve()
                packed = pack_folder(folder, Path(tmp) / f"{folder.name}.tar.gz")
                answer = self._upload(packed, progress)
                return {**answer, "filename": packed.name, "kind": "folder"}
        if not source.is_file():
            raise errors.NotFound(f"file {str(source)!r} not found")
        answer = self._upload(source, progress)
        return {**answer, "filename": source.name, "kind": "file"}

    def _upload(self, path: Path, progress: Progress | None) -> dict[str, Any]:
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            if progress:
                progress(0, total)
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    done += len(chunk)
                    yield chunk
                    if progress:
                        progress(done, total)

        headers = self._headers({"content-type": "application/octet-stream", "content-length": str(total)})
        response = self._send("POST", f"{self.url}/api/artifacts", headers=headers, content=chunks())
        answer: dict[str, Any] = response.json()
        return {"sha256": answer["sha256"], "size": answer.get("size", total)}

    def upload_bytes(self, data: bytes, filename: str) -> dict[str, Any]:
        """Upload in-memory bytes; returns an artifact reference like :meth:`upload_file`."""
        headers = self._headers({"content-type": "application/octet-stream"})
        response = self._send("POST", f"{self.url}/api/artifacts", headers=headers, content=data)
        answer = response.json()
        return {
            "sha256": answer["sha256"],
            "size": answer.get("size", len(data)),
            "filename": filename,
            "kind": "file",
        }

    def download(
        self,
        sha256: str,
        dest: str | os.PathLike[str],
        progress: Progress | None = None,
        *,
        verify: bool = True,
    ) -> Path:
        """Stream artifact ``sha256`` into ``dest`` (a file path, or a folder: ``dest/<sha256>``).

        The file appears atomically and, with ``verify``, only when its hash matches.
        """
        target = Path(dest).expanduser()
        if target.is_dir():
            target = target / sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        response = self._send(
            "GET", f"{self.url}/api/artifacts/{sha256}", headers=self._headers(), stream=True
        )
        digest = hashlib.sha256()
        total = int(response.headers.get("content-length") or 0)
        done = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total or done)
            if verify and digest.hexdigest() != sha256:
                raise errors.ModelyardError(
                    f"artifact {sha256} arrived corrupted (its sha256 is {digest.hexdigest()})"
                )
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        finally:
            response.close()
        return target

    # -- models ------------------------------------------------------------------------------

    def upload_model(
        self,
        path: str | os.PathLike[str],
        name: str,
        project: str,
        framework: str,
        tags: Sequence[str] = (),
        publish: bool = False,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a model file (or folder) and register it; returns the new Model."""
        artifact = self.upload_file(path, progress=progress)
        body: dict[str, Any] = {
            "name": name,
            "project": project,
            "framework": framework,
            "artifact_sha256": artifact["sha256"],
            "filename": artifact["filename"],
            "tags": list(tags),
            "published": publish,
            "metadata": dict(metadata or {}),
        }
        if artifact["kind"] == "folder":
            body["kind"] = "folder"
        return self._api("POST", "/models", json=body)

    def register_model_url(
        self,
        url: str,
        name: str,
        project: str,
        framework: str,
        tags: Sequence[str] = (),
        publish: bool = False,
        metadata: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> dict[str, Any]:
        """Register a remote file (http(s)://, s3://, gs://, az://, or a path the server reads)."""
        body: dict[str, Any] = {
            "name": name,
            "project": project,
            "framework": framework,
            "url": url,
            "tags": list(tags),
            "published": publish,
            "metadata": dict(metadata or {}),
        }
        if filename:
            body["filename"] = filename
        return self._api("POST", "/models", json=body)

    def list_models(
        self,
        name: str | None = None,
        project: str | None = None,
        framework: str | None = None,
        tags: Sequence[str] | None = None,
        published: bool | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Models matching every given filter, newest first (``name`` is a full-match regex)."""
        params: list[tuple[str, str]] = []
        for key, value in (("name", name), ("project", project), ("framework", framework)):
            if value is not None:
                params.append((key, value))
        params.extend(("tags", tag) for tag in tags or ())
        if published is not None:
            params.append(("published", "true" if published else "false"))
        if limit is not None:
            params.append(("limit", str(limit)))
        return self._api("GET", "/models", params=params)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._api("GET", f"/models/{model_id}")

    def publish_model(self, model_id: str) -> dict[str, Any]:
        return self._api("POST", f"/models/{model_id}/publish")

    def tag_model(self, model_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> dict[str, Any]:
        return self._api("POST", f"/models/{model_id}/tags", json={"add": list(add), "remove": list(remove)})

    def remove_model(self, model_id: str) -> None:
        """Delete a model; :class:`~modelyard.errors.Conflict` while an endpoint uses it."""
        self._api("DELETE", f"/models/{model_id}")

    # -- endpoints ---------------------------------------------------------------------------

    def _preprocess_ref(self, preprocess: Any) -> dict[str, Any] | None:
        if preprocess is None:
            return None
        if isinstance(preprocess, Mapping):
            return {k: preprocess[k] for k in ("sha256", "filename", "kind") if k in preprocess}
        ref = self.upload_file(preprocess)
        return {"sha256": ref["sha256"], "filename": ref["filename"], "kind": ref["kind"]}

    def add_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = "",
        engine: str = "",
        model_id: str | None = None,
        model_query: Mapping[str, Any] | None = None,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        outputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        *,
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) an endpoint version.

        ``preprocess`` is a path to a ``.py`` file or a package folder (uploaded first) or an
        artifact reference. ``model_query`` (``name``, ``project``, ``tags``, ``published``)
        picks the newest matching model instead of ``model_id``. ``if_revision``: only if the
        service is still at that revision (:class:`~modelyard.errors.RevisionConflict` else).
        """
        body: dict[str, Any] = {
            "endpoint": endpoint,
            "version": version or "",
            "engine": engine,
            "inputs": _tensor_dicts(inputs),
            "outputs": _tensor_dicts(outputs),
            "options": dict(options or {}),
            "auxiliary": dict(auxiliary or {}),
        }
        if model_id is not None:
            body["model_id"] = model_id
        if model_query is not None:
            body["model_query"] = dict(model_query)
        ref = self._preprocess_ref(preprocess)
        if ref is not None:
            body["preprocess"] = ref
        answer, _ = self._api_response(
            "POST", f"/services/{service}/endpoints", json=body, if_revision=if_revision
        )
        return answer

    def update_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        engine: str | None = None,
        model_id: str | None = None,
        model_query: Mapping[str, Any] | None = None,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] | None = None,
        outputs: Iterable[TensorSpec | Mapping[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Replace only the given fields of an endpoint version (``endpoint`` may be ``iris/1``).

        ``if_revision``: only if the service is still at that revision (else
        :class:`~modelyard.errors.RevisionConflict`); :meth:`modify_endpoint` reads, changes and
        writes with it, retrying.
        """
        body: dict[str, Any] = {}
        if engine is not None:
            body["engine"] = engine
        if model_id is not None:
            body["model_id"] = model_id
        if model_query is not None:
            body["model_query"] = dict(model_query)
        ref = self._preprocess_ref(preprocess)
        if ref is not None:
            body["preprocess"] = ref
        if inputs is not None:
            body["inputs"] = _tensor_dicts(inputs)
        if outputs is not None:
            body["outputs"] = _tensor_dicts(outputs)
        if options is not None:
            body["options"] = dict(options)
        if auxiliary is not None:
            body["auxiliary"] = dict(auxiliary)
        key = endpoint_key(endpoint, version)
        answer, _ = self._api_response(
            "PATCH", f"/services/{service}/endpoints/{key}", json=body, if_revision=if_revision
        )
        return answer

    def modify_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        change: EndpointChange | None = None,
        *,
        attempts: int = MODIFY_ATTEMPTS,
    ) -> dict[str, Any]:
        """Read an endpoint, compute fields from it, write them only over what was read.

        ``change(current)`` returns keyword arguments for :meth:`update_endpoint` (``options``,
        ``inputs``...), computed from the current endpoint; the write carries the revision that
        was read (``If-Match``), and if another change to the service came in between, the
        whole cycle runs again (up to ``attempts`` times, with a short random pause), so
        concurrent writers never undo each other's changes. Returns the updated endpoint.
        """
        if change is None:
            raise ValueError("modify_endpoint needs a change function")
        for attempt in range(1, attempts + 1):
            current, revision = self.get_endpoint_at(service, endpoint, version)
            fields = change(current)
            if not fields:
                return current
            try:
                return self.update_endpoint(service, endpoint, version, **dict(fields), if_revision=revision)
            except errors.RevisionConflict:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0, 0.02 * attempt))
        raise AssertionError("unreachable")

    def merge_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        attempts: int = MODIFY_ATTEMPTS,
    ) -> dict[str, Any]:
        """Merge keys into an endpoint's ``options``/``auxiliary`` (a ``None`` value removes the key).

        Safe against concurrent writers (:meth:`modify_endpoint`).
        """

        def merged(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(current or {})
            for key, value in changes.items():
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = value
            return out

        def change(current: dict[str, Any]) -> dict[str, Any]:
            fields: dict[str, Any] = {}
            if options:
                fields["options"] = merged(current.get("options"), options)
            if auxiliary:
                fields["auxiliary"] = merged(current.get("auxiliary"), auxiliary)
            return fields

        return self.modify_endpoint(service, endpoint, version, change, attempts=attempts)

    def list_endpoints(self, service: str) -> list[dict[str, Any]]:
        return self._api("GET", f"/services/{service}/endpoints")

    def list_endpoints_at(self, service: str) -> tuple[list[dict[str, Any]], int]:
        """The service's endpoints and the revision they were read at (for ``if_revision``)."""
        answer, response = self._api_response("GET", f"/services/{service}/endpoints")
        return answer, _revision_of(response)

    def get_endpoint(self, service: str, endpoint: str, version: str | None = None) -> dict[str, Any]:
        key = endpoint_key(endpoint, version)
        return self._api("GET", f"/services/{service}/endpoints/{key}")

    def get_endpoint_at(
        self, service: str, endpoint: str, version: str | None = None
    ) -> tuple[dict[str, Any], int]:
        """The endpoint and the service revision it was read at (for ``if_revision``)."""
        key = endpoint_key(endpoint, version)
        answer, response = self._api_response("GET", f"/services/{service}/endpoints/{key}")
        return answer, _revision_of(response)

    def remove_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        if_revision: int | None = None,
    ) -> None:
        self._api_response(
            "DELETE",
            f"/services/{service}/endpoints/{endpoint_key(endpoint, version)}",
            if_revision=if_revision,
        )

    # -- configuration and status ------------------------------------------------------------

    def get_config(
        self, service: str, after: int | None = None, wait: float | None = None
    ) -> ServiceConfig | None:
        """The service's configuration; ``None`` if nothing changed after ``after`` in ``wait`` s."""
        params: dict[str, str] = {}
        if after is not None:
            params["after"] = str(after)
        if wait is not None:
            params["wait"] = f"{wait:g}"
        timeout = httpx.Timeout(self.timeout + (wait or 0))
        response = self._send(
            "GET",
            f"{self.url}/api/services/{service}/config",
            headers=self._headers(),
            params=params,
            timeout=timeout,
        )
        if response.status_code == 304 or not response.content:
            return None
        return ServiceConfig.model_validate_json(response.content)

    def status(self, service: str) -> dict[str, Any]:
        """``{"service", "revision", "replicas": [...]}``: what each live replica has loaded."""
        return self._api("GET", f"/services/{service}/status")

    # -- custom statistics (metric rules) ----------------------------------------------------

    def add_metric_rule(
        self,
        service: str,
        endpoint: str,
        variables: Iterable[Mapping[str, Any]],
        log_freq: float = 1.0,
    ) -> dict[str, Any]:
        """Create or replace the custom statistics of ``endpoint`` (``iris/1``, ``iris/*``).

        ``variables``: ``{"name": "x0", "kind": "scalar", "buckets": [0, 1]}``,
        ``{"name": "y", "kind": "enum", "values": ["cat", "dog"]}``, ``{"name": "z", "kind": "value"}``
        or ``{"name": "n", "kind": "counter"}``.
        """
        body = {"endpoint": endpoint, "log_freq": log_freq, "variables": [dict(v) for v in variables]}
        return self._api("POST", f"/services/{service}/metrics", json=body)

    def list_metric_rules(self, service: str) -> list[dict[str, Any]]:
        return self._api("GET", f"/services/{service}/metrics")

    def remove_metric_rule(self, service: str, endpoint: str) -> None:
        self._api("DELETE", f"/services/{service}/metrics/{endpoint}")

    # -- tokens ------------------------------------------------------------------------------

    def create_token(self, name: str, role: str = "admin") -> dict[str, Any]:
        """A new token; the answer's ``token`` is the only time its plaintext is shown."""
        return self._api("POST", "/tokens", json={"name": name, "role": role})

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._api("GET", "/tokens")

    def revoke_token(self, name: str) -> None:
        self._api("DELETE", f"/tokens/{name}")

    # -- data plane --------------------------------------------------------------------------

    def infer(
        self,
        endpoint: str,
        version: str | None = None,
        data: Any = None,
        *,
        gzip: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """``POST /serve/<endpoint>[/<version>]`` on the data plane.

        ``data`` is JSON-encoded unless it is ``bytes`` (sent raw). The answer is decoded JSON
        when the server says so, else the raw bytes.
        """
        send_headers = dict(headers or {})
        if isinstance(data, bytes | bytearray):
            body = bytes(data)
            send_headers.setdefault("content-type", "application/octet-stream")
        else:
            body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
            send_headers.setdefault("content-type", "application/json")
        if gzip:
            body = gzip_module.compress(body)
            send_headers["content-encoding"] = "gzip"
        path = f"/serve/{endpoint_key(endpoint, version)}"
        response = self._send(
            "POST",
            f"{self.serving_url}{path}",
            what="the inference server",
            headers=self._headers(send_headers),
            content=body,
        )
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.content
