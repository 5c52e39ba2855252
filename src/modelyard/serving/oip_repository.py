"""The OIP model-repository extension, mapped onto the control plane.

A replica serves what its service's configuration says; it has no repository of
its own to load from. So:

* ``index`` lists the service's endpoint versions with this replica's state of
  each (``READY``, ``LOADING``, ``UNAVAILABLE`` with the load error as reason).
* ``load NAME`` makes sure endpoint NAME is served: when it is declared (here or,
  not yet synced, on the control plane) it waits until every version is loaded
  (400-class error with the reason when one failed to load). With
  ``parameters.config`` — a JSON object of ``modelyard endpoint add`` fields
  (``engine``, ``model_id``, ``version``, ``options``...) — it first adds or
  replaces that endpoint version through the control plane. An endpoint that is
  declared nowhere and comes without ``config`` is a 404 saying what to do.
* ``unload NAME`` removes every version of endpoint NAME from the service
  through the control plane — for every replica of the service, as Triton's
  unload does for its server — and waits until this replica dropped it.

Changing the configuration is the control plane's business and needs an admin
token: ``load`` with a config and ``unload`` forward the CALLER's
``Authorization`` header (the data plane itself has no authentication, so the
replica's own token is never lent to anonymous callers); without one they
answer 401.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from modelyard.client import error_from_response
from modelyard.config import endpoint_key
from modelyard.errors import BadRequest, ModelLoadError, NotFound, Unauthorized, Unavailable

if TYPE_CHECKING:
    from modelyard.serving.runtime import InferenceRuntime

STATES = {"ready": "READY", "updating": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}


class Repository:
    def __init__(self, runtime: InferenceRuntime, timeout_s: float = 60.0) -> None:
        self.runtime = runtime
        self.table = runtime.dataplane.table
        self.timeout_s = timeout_s

    @property
    def service(self) -> str:
        return self.runtime.settings.service

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries = []
        for key in sorted(self.table.status):
            status = self.table.status[key]
            endpoint, _, version = key.partition("/")
            state = STATES.get(status.state, "UNKNOWN")
            if status.state == "failed" and status.serving:
                state = "READY"
            if ready_only and state != "READY":
                continue
            entries.append(
                {"name": endpoint, "version": version, "state": state, "reason": status.error or ""}
            )
        return entries

    async def _call(self, method: str, path: str, authorization: str | None, **kw: Any) -> httpx.Response:
        headers = {"authorization": authorization} if authorization else None
        try:
            response = await self.runtime.http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the control plane cannot be reached: {exc}", retry_after=1) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    @staticmethod
    def _need_token(authorization: str, what: str) -> str:
        if not authorization.strip():
            raise Unauthorized(
                f"{what} changes the service's configuration on the control plane: "
                "send 'Authorization: Bearer <admin token>'"
            )
        return authorization

    async def _declared(self, name: str) -> list[str]:
        """The control plane's keys for endpoint ``name`` (what this replica may not have yet)."""
        response = await self._call("GET", f"/api/services/{self.service}/endpoints", None)
        return [str(e["key"]) for e in response.json() if e.get("endpoint") == name]

    async def _revision(self) -> int:
        response = await self._call("GET", f"/api/services/{self.service}", None)
        return int(response.json()["revision"])

    @staticmethod
    def _endpoint_spec(parameters: Any) -> dict[str, Any] | None:
        """``parameters.config`` as endpoint fields (None without one); 400 naming what is wrong,
        checked before anything else (token included) so a malformed request says so."""
        if not isinstance(parameters, dict):
            raise BadRequest(
                f'\'parameters\' must be a JSON object (e.g. {{"config": "..."}}), '
                f"got {type(parameters).__name__}"
            )
        config = parameters.get("config")
        if config is None:
            return None
        spec = config
        if isinstance(config, str | bytes):
            try:
                spec = orjson.loads(config)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"parameters.config is not valid JSON: {exc}") from None
        if not isinstance(spec, dict) or "engine" not in spec:
            raise BadRequest(
                "parameters.config must be a JSON object of endpoint fields with at least 'engine' "
                '(e.g. {"engine": "onnx", "model_id": "...", "version": "1"})'
            )
        return spec

    async def load(self, name: str, parameters: Any, authorization: str) -> None:
        spec = self._endpoint_spec(parameters)
        revision = 0
        if spec is not None:
            self._need_token(authorization, "loading with a config")
            spec = {**spec, "endpoint": name}
            await self._call("POST", f"/api/services/{self.service}/endpoints", authorization, json=spec)
            revision = await self._revision()
        elif name not in self.table.versions:
            if not await self._declared(name):
                raise NotFound(
                    f"endpoint {name!r} is not declared in service {self.service!r}: add it with "
                    "'modelyard endpoint add', or load it with parameters.config = "
                    '\'{"engine": ..., "model_id": ...}\''
                )
            revision = await self._revision()
        await self._wait(lambda: self._loaded(name, revision), f"endpoint {name!r} to load")

    def _loaded(self, name: str, revision: int) -> bool:
        if self.table.revision < revision:
            return False
        versions = self.table.versions.get(name)
        if not versions:
            raise NotFound(f"endpoint {name!r} is no longer declared in service {self.service!r}")
        done = True
        for version in versions:
            key = endpoint_key(name, version)
            status = self.table.status.get(key)
            if status is None or status.state in ("loading", "updating"):
                done = False
            elif status.state == "failed":
                raise ModelLoadError(f"endpoint {key!r} failed to load: {status.error}")
        return done

    async def unload(self, name: str, authorization: str) -> None:
        self._need_token(authorization, "unloading")
        response = await self._call("GET", f"/api/services/{self.service}/endpoints", authorization)
        keys = [str(e["key"]) for e in response.json() if e.get("endpoint") == name]
        if not keys:
            raise NotFound(f"endpoint {name!r} is not declared in service {self.service!r}")
        for key in keys:
            await self._call("DELETE", f"/api/services/{self.service}/endpoints/{key}", authorization)
        revision = await self._revision()
        await self._wait(
            lambda: self.table.revision >= revision and name not in self.table.versions,
            f"endpoint {name!r} to be removed from this replica",
        )

    async def _wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise Unavailable(f"gave up waiting for {what} after {self.timeout_s:g} s", retry_after=1)
            await asyncio.sleep(0.02)
