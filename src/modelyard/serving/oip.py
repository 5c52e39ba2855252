"""The Open Inference Protocol (KServe V2 / Triton HTTP REST) and KServe V1 over the data plane.

Routed from :class:`modelyard.serving.app.InferenceApp` for paths under ``/v2``
and ``/v1`` (KServe V1 lives in :mod:`modelyard.serving.kserve_v1`). Model name =
endpoint name, model version = endpoint version; a request without a version goes
where ``/serve/<endpoint>`` goes (the unversioned endpoint, else the highest version
that serves).

How an OIP request meets the endpoint's code (``preprocess → engine →
postprocess``, batched like ``/serve`` when the endpoint batches):

* the body handed on is the ONE input's numpy array when the request has one
  input, else a dict ``input name → array`` in request order;
* ``state["oip"]`` holds the request's ``id``, ``parameters``, per-input
  ``input_parameters`` and ``datatypes``, and the requested ``outputs``; code may
  set ``state["oip"]["response_parameters"]`` to add response ``parameters``;
  ``state["protocol"]`` is ``"oip"`` (``"v1"`` over KServe V1, absent on ``/serve``);
* what comes back is turned into output tensors by
  :func:`~modelyard.serving.oip_tensors.named_outputs`: a dict by name, a
  tuple/list by position over several declared outputs, anything else as the
  one declared output (or ``output0``).

Metadata comes from the endpoint's declared inputs/outputs, else from the engine
(``onnx`` knows its model's). Requests are checked against it: a name, datatype
or shape that does not match is a 400 naming the input and what was expected.

Health answers follow the spec: 200 for true, 400 for false. The repository
extension is mapped onto the control plane (see :class:`Repository`).

The transport-free part (metadata, readiness, :meth:`OipFront.infer_request` from
decoded tensors to named outputs) is shared with the gRPC front
(:mod:`modelyard.serving.oip_grpc`), which only decodes and encodes differently.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

import modelyard
from modelyard.config import split_endpoint_key
from modelyard.errors import BadRequest, ModelyardError, NotFound, PayloadTooLarge, Unavailable
from modelyard.serving.codec import read_body
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.oip_encoding import encode_infer_response, named_outputs
from modelyard.serving.oip_limits import parse_header_length
from modelyard.serving.oip_repository import Repository
from modelyard.serving.oip_tensors import (
    InferRequest,
    TensorMeta,
    check_inputs,
    datatype_of,
    parse_infer_request,
)

if TYPE_CHECKING:
    from modelyard.serving.runtime import InferenceRuntime

Receive = Callable[[], Awaitable[dict[str, Any]]]

EXTENSIONS = ["binary_tensor_data", "model_repository"]


@dataclass
class OipResponse:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _json(status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> OipResponse:
    return OipResponse(status, orjson.dumps(value), headers=headers or [])


@dataclass
class InferOutcome:
    """What an inference request produced, before a transport encodes it."""

    outputs: dict[str, np.ndarray]
    key: str
    """The endpoint version that answered (a canary may pick another than the one resolved)."""
    version: str
    parameters: dict[str, Any] | None
    """Response ``parameters`` the endpoint's code set in ``state["oip"]["response_parameters"]``."""


@dataclass
class ModelMeta:
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


def _tensor_meta(spec: Any) -> TensorMeta:
    datatype = None
    if spec.dtype:
        try:
            datatype = datatype_of(spec.dtype)
        except ModelyardError:
            datatype = None
    return TensorMeta(spec.name, datatype, list(spec.shape) if spec.shape else None)


def _from_engine(raw: list[dict[str, Any]] | None) -> list[TensorMeta]:
    return [TensorMeta(t["name"], t.get("datatype"), t.get("shape")) for t in raw or []]


def _merge(declared: list[TensorMeta], known: list[TensorMeta]) -> list[TensorMeta]:
    """Declared tensors win; what they leave out (datatype, shape) comes from the model."""
    if not declared:
        return known
    by_name = {t.name: t for t in known}
    out = []
    for t in declared:
        model = by_name.get(t.name)
        if model is not None:
            t = TensorMeta(t.name, t.datatype or model.datatype, t.shape or model.shape)
        out.append(t)
    return out


def model_meta(loaded: LoadedEndpoint) -> ModelMeta:
    """Declared I/O of the endpoint version, else what its engine knows of the model."""
    try:
        engine_meta = loaded.engine.metadata() or {}
    except Exception:
        engine_meta = {}
    config = loaded.config
    inputs = _merge([_tensor_meta(t) for t in config.inputs], _from_engine(engine_meta.get("inputs")))
    outputs = _merge([_tensor_meta(t) for t in config.outputs], _from_engine(engine_meta.get("outputs")))
    platform = str(engine_meta.get("platform") or f"modelyard_{loaded.engine.name}")
    return ModelMeta(platform, inputs, outputs)


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def read_request_body(scope: dict[str, Any], receive: Receive, limit: int) -> bytes | bytearray:
    """The whole body; a writable ``bytearray`` when Content-Length is known, so tensors
    decoded with ``np.frombuffer`` on it are zero-copy AND writable (torch wants that)."""
    encoding = _header(scope, b"content-encoding").strip().lower()
    length = _header(scope, b"content-length")

    async def chunks() -> Any:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    # ASCII digits only ("²" passes isdigit() but not int()); an absurd length is read as chunks
    if encoding not in ("", "identity") or not (length.isascii() and length.isdigit() and len(length) < 19):
        return await read_body(chunks(), limit=limit, content_encoding=encoding)
    size = int(length)
    if size > limit:
        raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
    buffer = bytearray(size)
    view = memoryview(buffer)
    pos = 0
    async for chunk in chunks():
        end = pos + len(chunk)
        if end > size:
            raise BadRequest(f"request body is longer than its Content-Length of {size} bytes")
        view[pos:end] = chunk
        pos = end
    if pos != size:
        raise BadRequest(f"request body has {pos} bytes but Content-Length says {size}")
    return buffer


class OipFront:
    """``/v2/...`` and ``/v1/...`` of one replica."""

    def __init__(self, runtime: InferenceRuntime) -> None:
        self.runtime = runtime
        self.dataplane = runtime.dataplane
        self.table = runtime.dataplane.table
        self.max_body = runtime.settings.max_body_bytes
        self.repository = Repository(runtime)
        self._meta: weakref.WeakKeyDictionary[LoadedEndpoint, ModelMeta] = weakref.WeakKeyDictionary()
        from modelyard.serving.kserve_v1 import KserveV1  # it builds on this module

        self.v1 = KserveV1(self)
        """KServe V1 (``/v1/...``): what user code receives there is in its module."""

    def meta(self, loaded: LoadedEndpoint) -> ModelMeta:
        meta = self._meta.get(loaded)
        if meta is None:
            meta = self._meta[loaded] = model_meta(loaded)
        return meta

    async def handle(self, scope: dict[str, Any], receive: Receive) -> OipResponse:
        """Answer one request; ModelyardErrors propagate to the app's error mapping."""
        try:
            return await self._handle(scope, receive)
        except MethodNotAllowed as exc:
            body = orjson.dumps({"error": exc.message, "kind": exc.kind})
            return OipResponse(405, body, headers=[(b"allow", exc.allow.encode())])

    async def _handle(self, scope: dict[str, Any], receive: Receive) -> OipResponse:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        parts = path.split("/")[1:]  # ["v2", ...]
        if parts[0] == "v1":
            return await self.v1.handle(scope, receive, parts[1:], method)
        rest = parts[1:]
        if not rest:
            self._allow(method, "GET")
            return _json(200, self.server_metadata())
        if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            self._allow(method, "GET")
            if rest[1] == "live":
                return _json(200, {"live": True})
            ready = self.runtime.ready()
            return _json(200 if ready else 400, {"ready": ready})
        if rest[0] == "models" and len(rest) >= 2:
            return await self._model(scope, receive, rest[1:], method)
        if rest[0] == "repository":
            return await self._repository(scope, receive, rest[1:], method)
        raise NotFound(f"no route for {method} {scope['path']}")

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"use {allowed} for this route", allowed)

    async def _model(
        self, scope: dict[str, Any], receive: Receive, rest: list[str], method: str
    ) -> OipResponse:
        name, version, action = rest[0], None, ""
        tail = rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if len(tail) > 1 or (tail and tail[0] not in ("ready", "infer")):
            raise NotFound(f"no route for {method} {scope['path']}")
        action = tail[0] if tail else ""
        if action == "infer":
            self._allow(method, "POST")
            return await self.infer(scope, receive, name, version)
        self._allow(method, "GET")
        if action == "ready":
            reason = self.not_ready_reason(name, version)
            if reason is not None:
                return _json(400, {"name": name, "ready": False, "error": reason})
            return _json(200, {"name": name, "ready": True})
        return _json(200, self.model_metadata(name, version))

    # -- the transport-free core, shared with the gRPC front -------------------------------------
    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "modelyard", "version": modelyard.__version__, "extensions": EXTENSIONS}

    def not_ready_reason(self, name: str, version: str | None) -> str | None:
        """``None`` when the model (version) can answer now, else why not; NotFound raises."""
        try:
            self.table.resolve(name, version)
        except Unavailable as exc:
            return exc.message
        return None

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The model's metadata as the REST spec spells it (the gRPC front copies it into protobuf)."""
        meta = self.meta(self.table.resolve(name, version))
        return {
            "name": name,
            "versions": [v for v in self.table.versions.get(name, []) if v],
            "platform": meta.platform,
            "inputs": [t.as_dict() for t in meta.inputs],
            "outputs": [t.as_dict() for t in meta.outputs],
        }

    async def infer_request(
        self, name: str, version: str | None, request: InferRequest, loaded: LoadedEndpoint | None = None
    ) -> InferOutcome:
        """Run a decoded request through the endpoint (checked against its metadata, batched
        like ``/serve``); ``loaded``: the version already resolved by the caller, if any."""
        with self.dataplane.rejections(name, version):  # counted like /serve's refusals
            if loaded is None:
                loaded = self.table.resolve(name, version)
            meta = self.meta(loaded)
            check_inputs(request, meta.inputs, loaded.key)
        oip_state: dict[str, Any] = {
            "id": request.id,
            "parameters": request.parameters,
            "input_parameters": request.input_parameters,
            "datatypes": request.datatypes,
            "outputs": [o.name for o in request.outputs] if request.outputs is not None else None,
        }
        body: Any = next(iter(request.inputs.values())) if len(request.inputs) == 1 else request.inputs
        result = await self.dataplane.infer(name, version, body, state={"oip": oip_state, "protocol": "oip"})
        outputs = named_outputs(result.value, meta.outputs)
        _, answered_version = split_endpoint_key(result.key)
        return InferOutcome(outputs, result.key, answered_version, oip_state.get("response_parameters"))

    # -- HTTP ------------------------------------------------------------------------------------
    async def infer(
        self, scope: dict[str, Any], receive: Receive, name: str, version: str | None
    ) -> OipResponse:
        with self.dataplane.rejections(name, version):  # counted like /serve's refusals
            loaded = self.table.resolve(name, version)  # 404 / 503 before reading the body
            raw = await read_request_body(scope, receive, self.max_body)
            header_length = parse_header_length(_header(scope, b"inference-header-content-length"))
            request = parse_infer_request(raw, header_length, limit=self.max_body)
        outcome = await self.infer_request(name, version, request, loaded)
        encoded = encode_infer_response(
            outcome.outputs,
            model_name=name,
            model_version=outcome.version,
            request=request,
            parameters=outcome.parameters,
        )
        headers = [(b"x-modelyard-endpoint", outcome.key.encode())]
        if encoded.header_length is None:
            return OipResponse(200, encoded.body, headers=headers)
        headers.append((b"inference-header-content-length", str(encoded.header_length).encode()))
        return OipResponse(200, encoded.body, b"application/octet-stream", headers)

    async def _repository(
        self, scope: dict[str, Any], receive: Receive, rest: list[str], method: str
    ) -> OipResponse:
        if rest == ["index"]:
            if method not in ("GET", "POST"):
                raise MethodNotAllowed("use POST for /v2/repository/index", "POST")
            body = await self._json_body(scope, receive) if method == "POST" else {}
            return _json(200, self.repository.index(bool(body.get("ready", False))))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            self._allow(method, "POST")
            body = await self._json_body(scope, receive)
            authorization = _header(scope, b"authorization")
            if rest[2] == "load":
                await self.repository.load(rest[1], body.get("parameters") or {}, authorization)
            else:
                await self.repository.unload(rest[1], authorization)
            return _json(200, {})
        raise NotFound(f"no route for {method} {scope['path']}")

    async def _json_body(self, scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
        raw = await read_request_body(scope, receive, self.max_body)
        if not raw.strip():
            return {}
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequest("the body must be a JSON object")
        return value


class MethodNotAllowed(ModelyardError):
    kind = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow
