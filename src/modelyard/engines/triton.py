"""``triton``: a remote engine that forwards the processed tensors to any Open Inference Protocol server.

Triton, KServe, MLServer, or another modelyard replica (``--grpc-port`` for gRPC):
the request goes over HTTP as OIP binary tensors, or over gRPC as raw tensor
contents (no JSON number formatting either way), and the outputs come back as
numpy arrays. Options:

* ``url`` (required): the server, ``http://host:8000`` (or ``https://``) for HTTP,
  ``grpc://host:8001`` (or a bare ``host:8001`` with ``protocol: grpc``) for gRPC;
* ``protocol``: ``http`` or ``grpc``; default from the URL's scheme, else ``http``;
* ``model_name`` (default: the endpoint name), ``model_version`` (default: none);
* ``timeout_s`` (default 30), ``binary`` (HTTP only; default true, false sends JSON tensors).

``load()`` reads the remote model's metadata (so a wrong URL or name fails the load
with the reason, and OIP metadata of this endpoint is the remote model's). Input
dtypes are cast to the remote model's datatypes. The engine is async (one aiohttp
connection pool, or one ``grpc.aio`` channel of ``tritonclient.grpc.aio``, on the
event loop; aiohttp rather than httpx because httpx's async client managed ~350-550
requests/s against a local server where aiohttp made 3,000-8,700, see ``bench/NOTES.md``)
and batchable: the dynamic batcher stacks requests into one remote
call. Both protocols fail alike: the remote server out of reach or timing out is
503 (``Unavailable``, retry after 1 s); the remote model refusing the input (HTTP
4xx; gRPC ``INVALID_ARGUMENT``, ``NOT_FOUND`` and the other caller's-fault codes)
is 400 naming the remote model; anything else the remote server answers is 422.
Over gRPC ``UNAVAILABLE`` (the remote overloaded or loading) is also 503, where
the HTTP path answers a remote 503 with 422. gRPC over TLS is not supported.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import InvalidInput, ModelLoadError, Unavailable, Unprocessable
from modelyard.serving.oip_encoding import encode_infer_request
from modelyard.serving.oip_tensors import DATATYPES, datatype_of, parse_infer_response

GRPC_UNAVAILABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
"""gRPC codes that mean "the remote server could not answer now" (HTTP: a connection error)."""
GRPC_REFUSED = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
}
"""gRPC codes of the caller's fault (HTTP: a 4xx); RESOURCE_EXHAUSTED is a message over the
remote's size limit (HTTP 413)."""


class TritonEngine(Engine):
    name: ClassVar[str] = "triton"
    batchable: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False

    def load(self) -> None:
        options = self.config.options
        raw_url = str(options.get("url") or "").strip()
        self.protocol = _protocol(raw_url, options.get("protocol"))
        self.model_name = str(options.get("model_name") or self.config.endpoint)
        version = options.get("model_version")
        self.model_version = str(version) if version else ""
        self.timeout = float(options.get("timeout_s", 30))
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.protocol == "grpc":
            self._load_grpc(raw_url)
            return
        url = raw_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ModelLoadError(
                "engine 'triton' needs option url=http://host:port (the OIP server's HTTP port) "
                "or grpc://host:port (its gRPC port)"
            )
        try:
            import aiohttp
        except ImportError:
            raise ModelLoadError(
                "engine 'triton' over HTTP needs aiohttp: pip install 'modelyard[triton]'"
            ) from None
        self._aiohttp = aiohttp
        self.url = url
        self.model_path_url = f"/v2/models/{self.model_name}" + (f"/versions/{version}" if version else "")
        self.infer_url = f"{url}{self.model_path_url}/infer"
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
        self.model = self.url

    def _load_grpc(self, url: str) -> None:
        """The remote model's metadata over gRPC (the sync client, in the load thread)."""
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise ModelLoadError(
                f"engine 'triton' with protocol grpc needs tritonclient[grpc] ({exc}): "
                "pip install 'modelyard[triton]'"
            ) from None
        target = url.removeprefix("grpc://").rstrip("/")
        if not target or "/" in target:
            raise ModelLoadError(
                f"engine 'triton' with protocol grpc needs url=grpc://host:port (the OIP server's gRPC "
                f"port), got {url!r}"
            )
        self.url = f"grpc://{target}"
        self.target = target
        try:
            client = grpcclient.InferenceServerClient(target)
        except InferenceServerException as exc:
            raise ModelLoadError(f"engine 'triton': bad gRPC address {url!r}: {exc.message()}") from None
        try:
            meta = client.get_model_metadata(self.model_name, self.model_version, client_timeout=self.timeout)
        except InferenceServerException as exc:
            code = (exc.status() or "").removeprefix("StatusCode.")
            if code in GRPC_UNAVAILABLE:
                raise ModelLoadError(f"engine 'triton': cannot reach {self.url}: {exc.message()}") from None
            raise ModelLoadError(
                f"engine 'triton': {self.url} has no model {self.model_name!r} ready ({code}: "
                f"{exc.message()})"
            ) from None
        finally:
            client.close()

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in items
            ]

        self._meta = {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": tensors(meta.inputs),
            "outputs": tensors(meta.outputs),
        }
        self._inputs = {t["name"]: t["datatype"] for t in self._meta["inputs"]}
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
        if self.protocol == "grpc":
            return await self._predict_grpc(self._named(data))
        aiohttp = self._aiohttp
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        inputs = self._named(data)
        body, header_length = encode_infer_request(inputs, self._inputs, binary=self.binary)
        headers = {"content-type": "application/octet-stream" if header_length else "application/json"}
        if header_length is not None:
            headers["inference-header-content-length"] = str(header_length)
        try:
            async with self._client.post(self.infer_url, data=body, headers=headers) as response:
                status, content = response.status, await response.read()
                length = response.headers.get("inference-header-content-length")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            reason = str(exc) or f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            raise Unavailable(f"remote OIP server {self.url} failed: {reason}", retry_after=1) from None
        if status != 200:
            try:
                message = orjson.loads(content).get("error") or content.decode(errors="replace")
            except (ValueError, AttributeError):
                message = content.decode(errors="replace")
            if 400 <= status < 500:
                raise InvalidInput(f"remote model {self.model_name!r} refused the input: {message}")
            raise Unprocessable(f"remote model {self.model_name!r} answered {status}: {message}")
        return parse_infer_response(content, int(length) if length else None)

    async def _predict_grpc(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.utils import InferenceServerException

        from modelyard.serving.oip_grpc_tensors import decode_infer_response

        if self._client is None:
            self._loop = asyncio.get_running_loop()
            self._client = grpcaio.InferenceServerClient(self.target)
        tensors = []
        for name, arr in inputs.items():
            datatype = self._inputs.get(name) or datatype_of(arr.dtype)
            if datatype == "BYTES" and arr.dtype.kind in "US":
                arr = arr.astype(object)  # tritonclient serialises object arrays of str/bytes
            tensor = grpcclient.InferInput(name, list(arr.shape), datatype)
            try:
                tensor.set_data_from_numpy(arr)
            except InferenceServerException as exc:
                raise InvalidInput(
                    f"input {name!r} for remote model {self.model_name!r}: {exc.message()}"
                ) from None
            tensors.append(tensor)
        try:
            result = await self._client.infer(
                self.model_name, tensors, model_version=self.model_version, client_timeout=self.timeout
            )
        except InferenceServerException as exc:
            code = (exc.status() or "").removeprefix("StatusCode.")
            if code in GRPC_UNAVAILABLE:
                raise Unavailable(
                    f"remote OIP server {self.url} failed: {code}: {exc.message()}", retry_after=1
                ) from None
            if code in GRPC_REFUSED:
                raise InvalidInput(
                    f"remote model {self.model_name!r} refused the input: {exc.message()}"
                ) from None
            raise Unprocessable(
                f"remote model {self.model_name!r} answered {code}: {exc.message()}"
            ) from None
        return decode_infer_response(result.get_response())

    def unload(self) -> None:
        client, loop = getattr(self, "_client", None), getattr(self, "_loop", None)
        self._client = None
        if client is not None and loop is not None and not loop.is_closed():
            close = client.close()  # grpc.aio's client and aiohttp's session alike
            try:
                asyncio.run_coroutine_threadsafe(close, loop)
            except RuntimeError:
                close.close()  # the loop stopped meanwhile: drop the coroutine unawaited
        self.model = None


def _protocol(url: str, option: Any) -> str:
    """``http`` or ``grpc``: the ``protocol`` option, else the URL's scheme, else ``http``."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if option is None or str(option).strip() == "":
        return "grpc" if scheme == "grpc" else "http"
    protocol = str(option).strip().lower()
    if protocol not in ("http", "grpc"):
        raise ModelLoadError(f"engine 'triton': protocol {option!r} is neither 'http' nor 'grpc'")
    if protocol == "http" and scheme == "grpc":
        raise ModelLoadError(f"engine 'triton': url {url!r} is a gRPC address but protocol is 'http'")
    if protocol == "grpc" and scheme in ("http", "https", "grpcs"):
        raise ModelLoadError(
            f"engine 'triton': protocol 'grpc' needs url=grpc://host:port (the OIP server's gRPC "
            f"port; TLS is not supported), got {url!r}"
        )
    return protocol
