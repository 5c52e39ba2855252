"""Names of the Redis keys around one input stream, and the result record both sides share.

For an input stream ``S`` (default ``serving_stream``):

===========================  ====================================================================
``S``                        the input stream (entries: ``uri``, ``data``, ``endpoint``?, ``t``?)
``S:result:<uri>``           one finished result (``MYQ1``), with a TTL
``S:results``                sorted set of finished uris, scored by finish time (ms), for dequeue
``S:dead``                   dead-letter stream: inputs that failed too often, with the error
``S:errors``                 hash entry id → last transient error (while an entry is retried)
``S:stats``                  hash of counters over all workers (``results``, ``duplicates``, ...)
``S:workers``                hash worker name → last heartbeat (ms), refreshed every few seconds
===========================  ====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelyard import errors
from modelyard.queue import codec

DEFAULT_STREAM = "serving_stream"
DEFAULT_GROUP = "modelyard"


@dataclass(frozen=True)
class QueueKeys:
    stream: str = DEFAULT_STREAM

    @property
    def index(self) -> str:
        return f"{self.stream}:results"

    @property
    def dead(self) -> str:
        return f"{self.stream}:dead"

    @property
    def errors(self) -> str:
        return f"{self.stream}:errors"

    @property
    def stats(self) -> str:
        return f"{self.stream}:stats"

    @property
    def workers(self) -> str:
        return f"{self.stream}:workers"

    def result(self, uri: str) -> str:
        return f"{self.stream}:result:{uri}"

    @property
    def result_prefix(self) -> str:
        return f"{self.stream}:result:"


_ERRORS_BY_KIND: dict[str, type[errors.ModelyardError]] = {
    cls.kind: cls
    for cls in (
        errors.BadRequest,
        errors.InvalidInput,
        errors.NotFound,
        errors.Unprocessable,
        errors.Unavailable,
        errors.Overloaded,
        errors.ModelLoadError,
        errors.UserCodeError,
    )
}


@dataclass
class Result:
    """What a worker wrote for one uri: a value, or an error with its kind."""

    uri: str
    ok: bool
    value: Any = None
    error: str | None = None
    kind: str | None = None
    endpoint: str | None = None
    """The endpoint version that answered (``iris/1``), when routing got that far."""
    dead_lettered: bool = False
    deliveries: int = 1
    enqueued_ms: float | None = None
    finished_ms: float | None = None
    worker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def unwrap(self) -> Any:
        """The value, or the :mod:`modelyard.errors` exception of the error's kind."""
        if self.ok:
            return self.value
        cls = _ERRORS_BY_KIND.get(self.kind or "", errors.ModelyardError)
        raise cls(self.error or "failed")

    def encode(self) -> bytes:
        record: dict[str, Any] = {"uri": self.uri, "ok": self.ok}
        if self.ok:
            record["value"] = self.value
        else:
            record["error"] = self.error
            record["kind"] = self.kind
        for name in ("endpoint", "enqueued_ms", "finished_ms", "worker"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        if self.dead_lettered:
            record["dead_lettered"] = True
        record["deliveries"] = self.deliveries
        return codec.encode(record)

    @classmethod
    def decode(cls, blob: bytes) -> Result:
        record = codec.decode(blob)
        if not isinstance(record, dict) or "uri" not in record or "ok" not in record:
            raise codec.DecodeError("a queue result must be an object with 'uri' and 'ok'")
        known = {
            "uri", "ok", "value", "error", "kind", "endpoint", "dead_lettered",
            "deliveries", "enqueued_ms", "finished_ms", "worker",
        }  # fmt: skip
        return cls(
            uri=str(record["uri"]),
            ok=bool(record["ok"]),
            value=record.get("value"),
            error=record.get("error"),
            kind=record.get("kind"),
            endpoint=record.get("endpoint"),
            dead_lettered=bool(record.get("dead_lettered", False)),
            deliveries=int(record.get("deliveries", 1)),
            enqueued_ms=record.get("enqueued_ms"),
            finished_ms=record.get("finished_ms"),
            worker=record.get("worker"),
            extra={k: v for k, v in record.items() if k not in known},
        )
