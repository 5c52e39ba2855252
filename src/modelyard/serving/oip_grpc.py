"""The Open Inference Protocol over gRPC: KServe V2 / Triton's ``inference.GRPCInferenceService``.

A transport adapter, like the HTTP one (:mod:`modelyard.serving.oip`): it decodes
a message into the same :class:`~modelyard.serving.oip_tensors.InferRequest` and
calls the same core (:meth:`OipFront.infer_request`: metadata check, endpoint
code, batching, canaries), then encodes the outputs
(:mod:`modelyard.serving.oip_grpc_tensors`). The servicer and messages are the
ones generated from Triton's ``grpc_service.proto`` that ship with
``tritonclient[grpc]``, so Triton's and KServe's gRPC clients work unchanged. It
runs on ``grpc.aio`` on the replica's own event loop: no threads, and requests
from both fronts meet in one batcher.

Started by :class:`~modelyard.serving.runtime.InferenceRuntime` when the
composition root gives it ``Settings.grpc_port`` (``modelyard serve`` and
``modelyard inference``, ``--grpc-port``), stopped with it.

Supported: ``ServerLive``, ``ServerReady``, ``ServerMetadata``, ``ModelReady``
(false for an unknown model, as Triton answers), ``ModelMetadata``, ``ModelInfer``
(typed ``contents`` or ``raw_input_contents``, every datatype, requested outputs,
``id`` echoed, ``parameters`` both ways; outputs as ``raw_output_contents``), and
the repository extension: ``RepositoryIndex``, ``RepositoryModelLoad`` and
``RepositoryModelUnload``, which change the service's configuration with the
CALLER's ``authorization`` metadata (``Bearer <admin token>``), as over HTTP.
Everything else (streaming, model config and statistics, shared memory, trace
and log settings) answers ``UNIMPLEMENTED`` saying what to use instead.

At most ``Settings.grpc_max_concurrent_rpcs`` calls run at once (per worker); the
next ones are answered ``RESOURCE_EXHAUSTED`` at once rather than queued. Messages
are limited to ``Settings.max_body_bytes``, as HTTP bodies, and so are the tensor
shapes they declare (:mod:`modelyard.serving.oip_grpc_tensors`).

Errors leave through :mod:`modelyard.grpc_errors` (one table, the twin of the HTTP
one): the message names the input or model as over HTTP; ``retry-after`` and
``modelyard-kind`` ride in the trailing metadata. The endpoint version that
answered an inference is in the trailing metadata ``modelyard-endpoint``.

With several worker processes each one runs its own gRPC server on the same port
with ``SO_REUSEPORT`` (the kernel spreads CONNECTIONS over the workers; an HTTP/2
connection then stays on its worker, so one client channel is served by one
worker). With one worker ``SO_REUSEPORT`` is off, so a port already taken fails
the start instead of being silently shared.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelyard.errors import ModelyardError, NotFound
from modelyard.grpc_errors import code_for, error_metadata
from modelyard.serving.oip import OipFront
from modelyard.serving.oip_encoding import select_outputs
from modelyard.serving.oip_grpc_tensors import (
    decode_infer_request,
    encode_infer_response,
    parameters_from_pb,
)

if TYPE_CHECKING:
    from modelyard.serving.runtime import InferenceRuntime

log = logging.getLogger("modelyard.grpc")

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

STOP_GRACE_S = 5.0
"""How long in-flight RPCs may finish when the replica stops."""


def _answer_errors(method: Handler) -> Handler:
    """Turn ModelyardErrors into their gRPC status; anything else is INTERNAL, logged, no trace."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except ModelyardError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        await context.abort(code_for(error), error.message, trailing_metadata=error_metadata(error))

    return wrapper  # type: ignore[return-value]


def _unimplemented(message: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: Any, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return method


def _authorization(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return str(value)
    return ""


class OipGrpcServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over one replica's :class:`OipFront`."""

    def __init__(self, front: OipFront) -> None:
        self.front = front

    @_answer_errors
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_answer_errors
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.front.runtime.ready())

    @_answer_errors
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.front.server_metadata())

    @_answer_errors
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            reason = self.front.not_ready_reason(request.name, request.version or None)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=reason is None)

    @_answer_errors
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.front.model_metadata(request.name, request.version or None)
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for tensor in meta["inputs"]:
            response.inputs.add(**tensor)
        for tensor in meta["outputs"]:
            response.outputs.add(**tensor)
        return response

    @_answer_errors
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        name, version = request.model_name, request.model_version or None
        with self.front.dataplane.rejections(name, version):  # counted like /serve's refusals
            loaded = self.front.table.resolve(name, version)  # NOT_FOUND / UNAVAILABLE before decoding
            decoded = decode_infer_request(request, limit=self.front.max_body)
        outcome = await self.front.infer_request(name, version, decoded, loaded)
        selected = select_outputs(outcome.outputs, decoded, name)
        context.set_trailing_metadata((("modelyard-endpoint", outcome.key),))
        return encode_infer_response(
            outcome.outputs,
            [output for output, _ in selected],
            model_name=name,
            model_version=outcome.version,
            request_id=decoded.id,
            parameters=outcome.parameters,
        )

    @_answer_errors
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self.front.repository.index(request.ready):
            response.models.add(**entry)
        return response

    @_answer_errors
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        parameters = parameters_from_pb(request.parameters)
        await self.front.repository.load(request.model_name, parameters, _authorization(context))
        return pb.RepositoryModelLoadResponse()

    @_answer_errors
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.front.repository.unload(request.model_name, _authorization(context))
        return pb.RepositoryModelUnloadResponse()

    ModelStreamInfer = _unimplemented(
        "ModelStreamInfer is not supported by modelyard: use ModelInfer (concurrent calls are batched)"
    )
    ModelConfig = _unimplemented(
        "modelyard has no Triton model configuration: use ModelMetadata for inputs and outputs"
    )
    ModelStatistics = _unimplemented(
        "ModelStatistics is not supported by modelyard: read the replica's Prometheus /metrics"
    )
    SystemSharedMemoryStatus = _unimplemented("the shared-memory extension is not supported by modelyard")
    SystemSharedMemoryRegister = SystemSharedMemoryStatus
    SystemSharedMemoryUnregister = SystemSharedMemoryStatus
    CudaSharedMemoryStatus = _unimplemented("the CUDA shared-memory extension is not supported by modelyard")
    CudaSharedMemoryRegister = CudaSharedMemoryStatus
    CudaSharedMemoryUnregister = CudaSharedMemoryStatus
    TraceSetting = _unimplemented("the trace extension is not supported by modelyard")
    LogSettings = _unimplemented("the logging extension is not supported by modelyard")


def listen_address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class OipGrpcServer:
    """The gRPC front of one replica (one per worker process)."""

    def __init__(self, runtime: InferenceRuntime, port: int) -> None:
        settings = runtime.settings
        self.address = listen_address(settings.host, port)
        self.reuse_port = settings.several_processes()
        self.max_message = settings.max_body_bytes
        self.max_concurrent_rpcs = settings.grpc_max_concurrent_rpcs
        self.front = OipFront(runtime)
        self._server: Any = None

    async def start(self) -> None:
        options = [
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ("grpc.max_receive_message_length", self.max_message),
            ("grpc.max_send_message_length", -1),
        ]
        # past the limit grpc answers RESOURCE_EXHAUSTED at once: a flood is refused, not queued
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(OipGrpcServicer(self.front), server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"the gRPC front cannot listen on {self.address}: {exc}") from None
        if not bound:  # older grpcio answers 0 instead of raising
            raise RuntimeError(f"the gRPC front cannot listen on {self.address} (port taken?)")
        await server.start()
        self._server = server
        log.info("Open Inference Protocol over gRPC on %s", self.address)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
