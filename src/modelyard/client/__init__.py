"""The Python SDK for the control plane REST API (``docs/rest-api.md``) and the data plane.

Synchronous, on httpx. Every method maps to one route and returns the decoded
JSON (plain dicts and lists, shaped as the API documents them), except
:meth:`Client.get_config`, which returns the typed :class:`~modelyard.config.ServiceConfig`.
Errors come back as the :mod:`modelyard.errors` exception of the server's ``kind``::

    from modelyard import Client

    client = Client()                      # MODELYARD_URL, MODELYARD_TOKEN or <home>/token
    model = client.upload_model("model.pkl", name="iris", project="demo", framework="sklearn")
    client.add_endpoint("default", "iris", version="1", engine="sklearn", model_id=model["id"])
    client.infer("iris", {"x0": 1, "x1": 2}, version="1")   # or client.infer("iris/1", {...})

``examples/sdk.py`` runs that walk-through against a server (docs/concepts.md, "Python SDK").
"""

from __future__ import annotations

import gzip as gzip_module
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import orjson

from modelyard import errors
from modelyard.client.endpoints import MODIFY_ATTEMPTS, EndpointCalls, EndpointChange
from modelyard.client.repository import CHUNK_SIZE, Progress, RepositoryCalls, pack_folder
from modelyard.client.traffic import TrafficCalls
from modelyard.client.transport import ERROR_BY_KIND, ApiClient, error_from_response
from modelyard.config import ServiceConfig, endpoint_key

__all__ = [
    "CHUNK_SIZE",
    "ERROR_BY_KIND",
    "MODIFY_ATTEMPTS",
    "ApiClient",
    "Client",
    "EndpointCalls",
    "EndpointChange",
    "Progress",
    "RepositoryCalls",
    "TrafficCalls",
    "error_from_response",
    "pack_folder",
]


class Client(EndpointCalls, TrafficCalls):
    """A synchronous client of one control plane (and the data plane at the same address).

    Its arguments are :class:`~modelyard.client.transport.ApiClient`'s. The calls live by subject:
    :class:`~modelyard.client.repository.RepositoryCalls`,
    :class:`~modelyard.client.endpoints.EndpointCalls`,
    :class:`~modelyard.client.traffic.TrafficCalls`; this class adds services, configuration,
    metric rules, tokens and :meth:`infer`.
    """

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

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
        data: Any = None,
        *,
        version: str | None = None,
        gzip: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """``POST /serve/<endpoint>[/<version>]`` on the data plane: ``infer("iris", {"x0": 1})``.

        ``endpoint`` may name the version too (``"iris/1"``), or give it as ``version=``
        (keyword only, so the body is never taken for a version); neither: the unversioned
        endpoint, else the highest version serving. ``data`` is JSON-encoded unless it is
        ``bytes`` (sent raw). The answer is decoded JSON when the server says so, else the raw
        bytes.
        """
        if version and "/" in endpoint:
            raise errors.BadRequest(
                f"endpoint {endpoint!r} names its version already; drop version={version!r}"
            )
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
