"""``triton``: a remote engine that forwards the processed tensors to any Open Inference Protocol server.

Triton, KServe, MLServer, or another modelyard replica: the request goes over HTTP
as OIP binary tensors (no JSON number formatting either way) and the outputs come
back as numpy arrays. Options:

* ``url`` (required): the server, ``http://host:8000``;
* ``model_name`` (default: the endpoint name), ``model_version`` (default: none);
* ``timeout_s`` (default 30), ``binary`` (default true; false sends JSON tensors).

``load()`` reads the remote model's metadata (so a wrong URL or name fails the load
with the reason, and OIP metadata of this endpoint is the remote model's). Input
dtypes are cast to the remote model's datatypes. The engine is async (one
connection pool on the event loop) and batchable: the dynamic batcher stacks
requests into one remote call. gRPC is not implemented; use the HTTP port.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httpx
import numpy as np

from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import InvalidInput, ModelLoadError, Unavailable, Unprocessable
from modelyard.serving.oip_tensors import DATATYPES, encode_infer_request, parse_infer_response


class TritonEngine(Engine):
    name: ClassVar[str] = "triton"
    batchable: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False

    def load(self) -> None:
        options = self.config.options
        url = str(options.get("url") or "").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ModelLoadError(
                "engine 'triton' needs option url=http://host:port (the OIP server's HTTP port)"
            )
        self.url = url
        self.model_name = str(options.get("model_name") or self.config.endpoint)
        version = options.get("model_version")
        self.model_path_url = f"/v2/models/{self.model_name}" + (f"/versions/{version}" if version else "")
        self.timeout = float(options.get("timeout_s", 30))
        self.binary = str(options.get("binary", "true")).lower() not in ("false", "0", "no")
        try:
            response = httpx.get(f"{url}{self.model_path_url}", timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"engine 'triton': cannot reach {url}: {exc}") from None
        if response.status_code != 200:
            raise ModelLoadError(
                f"engine 'triton': {url} has no model {self.model_name!r} ready "
                f"({response.status_code}: {response.text[:200]})"
            )
        self._meta: dict[str, Any] = response.json()
        self._inputs = {t["name"]: t["datatype"] for t in self._meta.get("inputs") or []}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.model = self.url

    def metadata(self) -> dict[str, Any]:
        meta = getattr(self, "_meta", None) or {}
        return {
            "platform": f"remote:{meta.get('platform', 'oip')}",
            "inputs": meta.get("inputs") or [],
            "outputs": meta.get("outputs") or [],
        }

    def _named(self, data: Any) -> dict[str, np.ndarray]:
        if isinstance(data, dict):
            unknown = [n for n in data if self._inputs and n not in self._inputs]
            if unknown:
                raise InvalidInput(f"remote model {self.model_name!r} has no input {unknown[0]!r}")
            named = dict(data)
        elif len(self._inputs) == 1:
            named = {next(iter(self._inputs)): data}
        else:
            raise InvalidInput(
                f"remote model {self.model_name!r} has {len(self._inputs)} inputs; send a dict of "
                f"{', '.join(self._inputs)}"
            )
        out = {}
        for name, value in named.items():
            arr = np.asarray(value)
            datatype = self._inputs.get(name)
            if datatype in DATATYPES and datatype != "BYTES":
                arr = arr.astype(DATATYPES[datatype], copy=False)
            out[name] = arr
        return out

    async def predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
        inputs = self._named(data)
        body, header_length = encode_infer_request(inputs, self._inputs, binary=self.binary)
        headers = {"content-type": "application/octet-stream" if header_length else "application/json"}
        if header_length is not None:
            headers["inference-header-content-length"] = str(header_length)
        try:
            response = await self._client.post(f"{self.model_path_url}/infer", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"remote OIP server {self.url} failed: {exc}", retry_after=1) from None
        if response.status_code != 200:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            if 400 <= response.status_code < 500:
                raise InvalidInput(f"remote model {self.model_name!r} refused the input: {message}")
            raise Unprocessable(
                f"remote model {self.model_name!r} answered {response.status_code}: {message}"
            )
        length = response.headers.get("inference-header-content-length")
        return parse_infer_response(response.content, int(length) if length else None)

    def unload(self) -> None:
        client, loop = getattr(self, "_client", None), getattr(self, "_loop", None)
        self._client = None
        if client is not None and loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            except RuntimeError:
                pass
        self.model = None
