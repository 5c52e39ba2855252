"""One stream entry as a worker sees it: its fields parsed, and the result record it gets.

Kept apart from :mod:`modelyard.queue.worker` (which owns the Redis commands and the
consumer loop) because this part is pure: what an entry's fields mean, which problems of
an entry are the caller's (answered with an error result), and what a dead-lettered copy
holds. The wire format is in ``docs/queue.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.errors import BadRequest, ModelyardError
from modelyard.queue import codec
from modelyard.queue.keys import Result

Entry = tuple[str, dict[bytes, bytes]]
"""``(entry id, fields)`` as XREADGROUP / XAUTOCLAIM return them."""


@dataclass
class Item:
    """One entry through a batch: parsed, then answered (``result``) or left for a retry."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    uri: str | None = None
    body: Any = None
    endpoint: str = ""
    error: ModelyardError | None = None
    result: Result | None = None
    transient: str | None = None
    """The error of a failure worth retrying (endpoint loading, ...): the entry stays pending."""
    blob: bytes = b""

    def decode(self, default_endpoint: str | None) -> None:
        """Fill ``uri``, ``endpoint`` and ``body`` from the fields, or ``error`` naming what is wrong."""
        f = self.fields
        raw_uri = f.get(b"uri")
        if raw_uri:
            try:
                self.uri = raw_uri.decode()
            except UnicodeDecodeError:
                self.uri = None
        if not self.uri:
            self.error = BadRequest("entry has no 'uri' field (or it is not UTF-8); it cannot be answered")
            return
        endpoint = f.get(b"endpoint")
        self.endpoint = endpoint.decode(errors="replace").strip("/") if endpoint else (default_endpoint or "")
        if not self.endpoint:
            self.error = BadRequest("entry names no endpoint and the worker has no default --endpoint")
            return
        data = f.get(b"data")
        if data is None:
            self.error = BadRequest("entry has no 'data' field with the inputs")
            return
        try:
            self.body = codec.decode_inputs(data)
        except ModelyardError as exc:
            self.error = exc

    def error_result(self, exc: ModelyardError, answered: str | None = None) -> Result:
        return Result(
            uri=self.uri or "",
            ok=False,
            error=exc.message,
            kind=exc.kind,
            endpoint=answered or self.endpoint or None,
            enqueued_ms=self.enqueued_ms(),
        )

    def enqueued_ms(self) -> float | None:
        """The producer's ``t`` field (Unix ms), when it sent a readable one."""
        raw = self.fields.get(b"t")
        try:
            return float(raw) if raw else None
        except ValueError:
            return None

    def dead_fields(self, error: str | None) -> dict[Any, Any]:
        """The entry's own fields plus why it was given up on, for the dead-letter stream."""
        fields: dict[Any, Any] = dict(self.fields)
        fields.update({"error": error or "", "deliveries": self.deliveries, "entry_id": self.entry_id})
        return fields


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
