"""The inference server's HTTP front: a small ASGI app over :class:`DataPlane`.

Routes: ``POST /serve/<endpoint>[/<version>]``, ``GET /health/live``,
``GET /health/ready``, ``GET /status``, ``GET /metrics`` (Prometheus). Plain ASGI rather than a framework
because this is the hot path: one dict lookup to route, no per-request
validation layers. Every error leaves through :mod:`modelyard.http_errors`,
so a kind means the same status here as on the control plane; anything
unexpected is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from modelyard.errors import BadRequest, ModelyardError, NotFound, PayloadTooLarge
from modelyard.http_errors import error_body, error_headers, status_for
from modelyard.serving.codec import decode_body, encode_json, read_body
from modelyard.serving.oip import OipFront
from modelyard.serving.runtime import InferenceRuntime

log = logging.getLogger("modelyard.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    raw_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ModelyardError) -> None:
    headers = [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
    await send_response(send, status_for(exc), orjson.dumps(error_body(exc)), headers=headers)


async def body_chunks(receive: Receive, first: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive (``first``: a message already received)."""
    message = first if first is not None else await receive()
    while True:
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
        message = await receive()


def body_headers(scope: Scope) -> tuple[bytes, str, str]:
    """Content-Length (raw), Content-Encoding and Content-Type, in one pass over the headers."""
    length, encoding, content_type = b"", "", ""
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = value
        elif key == b"content-type":
            content_type = value.decode("latin-1")
        elif key == b"content-encoding":
            encoding = value.decode("latin-1")
    return length, encoding, content_type


class InferenceApp:
    """ASGI app of one replica. ``runtime`` is started by the lifespan (or by the host app)."""

    def __init__(self, runtime: InferenceRuntime, *, manage_lifespan: bool = True) -> None:
        self.runtime = runtime
        self.dataplane = runtime.dataplane
        self.max_body = runtime.settings.max_body_bytes
        self.manage_lifespan = manage_lifespan
        self.oip = OipFront(runtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self.http(scope, receive, send)
            except ModelyardError as exc:
                await send_error(send, exc)
            except Exception:
                log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
                await send_response(send, 500, b'{"error":"internal error","kind":"internal"}')
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.manage_lifespan:
                        await self.runtime.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.manage_lifespan:
                    await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/serve/"):
            if method != "POST":
                await send_response(
                    send,
                    405,
                    b'{"error":"use POST for /serve","kind":"method_not_allowed"}',
                    headers=[(b"allow", b"POST")],
                )
                return
            await self.serve(scope, receive, send, path[7:])
            return
        if path.startswith(("/v2/", "/v1/")) or path == "/v2":  # Open Inference Protocol, KServe V1
            response = await self.oip.handle(scope, receive)
            await send_response(send, response.status, response.body, response.content_type, response.headers)
            return
        if method == "GET":
            if path == "/health/live":
                await send_response(send, 200, b'{"status":"live"}')
                return
            if path == "/health/ready":
                ready = self.runtime.ready()
                body = orjson.dumps(
                    {
                        "status": "ready" if ready else "not ready",
                        "revision": self.dataplane.table.revision,
                    }
                )
                await send_response(send, 200 if ready else 503, body)
                return
            if path == "/metrics":
                body, content_type = self.runtime.metrics.exposition()
                await send_response(send, 200, body, content_type.encode())
                return
            if path == "/status":
                snapshot = self.dataplane.table.snapshot()
                snapshot["replica"] = self.runtime.sync.replica
                snapshot["control_plane_connected"] = self.runtime.sync.connected
                snapshot["endpoint_filter"] = self.runtime.sync.endpoint_filter  # empty: all
                snapshot["canaries"] = self.dataplane.router.snapshot()
                snapshot["admission"] = self.dataplane.admission.snapshot()  # this worker's
                loaded_now = self.dataplane.table.ready
                for entry in snapshot["endpoints"]:
                    loaded = loaded_now.get(entry["key"])
                    if loaded is not None:  # where its chain runs, and what it costs (this worker)
                        entry["placement"] = loaded.placement.snapshot()
                await send_response(send, 200, orjson.dumps(snapshot))
                return
        raise NotFound(f"no route for {method} {path}")

    async def serve(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        endpoint, _, version = rest.strip("/").partition("/")
        if not endpoint or "/" in version:
            raise NotFound(f"no endpoint at /serve/{rest}: use /serve/<endpoint>[/<version>]")
        length, encoding, content_type = body_headers(scope)
        try:
            # refuse early when the declared length is already over the limit (ASCII digits: bytes;
            # 19 of them are over any limit, and int() refuses thousands)
            if length and not encoding and length.isdigit() and int(length[:19]) > self.max_body:
                raise PayloadTooLarge(f"request body is larger than the limit of {self.max_body} bytes")
            first = await receive()
            if not encoding and first["type"] == "http.request" and not first.get("more_body", False):
                raw = first.get("body", b"")  # the whole body in one message: the common case
                if len(raw) > self.max_body:
                    raise PayloadTooLarge(f"request body is larger than the limit of {self.max_body} bytes")
            else:
                chunks = body_chunks(receive, first)
                raw = await read_body(chunks, limit=self.max_body, content_encoding=encoding)
            body = decode_body(raw, content_type)
        except ModelyardError as exc:
            self.dataplane.count_rejected(endpoint, version, exc)
            raise
        result = await self.dataplane.infer(endpoint, version or None, body, headers=scope["headers"])
        value = result.value
        endpoint_header = (b"x-modelyard-endpoint", result.key.encode())
        if isinstance(value, bytes | bytearray):
            await send_response(send, 200, bytes(value), b"application/octet-stream", [endpoint_header])
        else:
            await send_response(send, 200, encode_json(value), headers=[endpoint_header])
