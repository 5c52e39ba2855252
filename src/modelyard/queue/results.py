"""The result side of a queue: read results by uri, dead letters, worker heartbeats and counters.

::

    from modelyard.queue import OutputQueue

    outq = OutputQueue("redis://127.0.0.1:6379/0", stream="serving_stream")
    outq.query("req-1")            # None while pending, then a Result
    outq.wait("req-1", timeout=5)  # poll until there is one
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis

from modelyard.queue.connect import RETRYABLE, QueueUnavailable, connect, describe, now_ms
from modelyard.queue.keys import DEFAULT_STREAM, QueueKeys, Result


class OutputQueue:
    """Consumer side: results by uri. Results expire after the worker's TTL."""

    def __init__(
        self,
        redis_url: str | None = None,
        stream: str = DEFAULT_STREAM,
        *,
        client: redis.Redis | None = None,
    ) -> None:
        self.redis: Any = connect(redis_url, client)  # redis-py's reply types are unions
        self.keys = QueueKeys(stream)
        self.stream = stream

    def close(self) -> None:
        self.redis.close()

    def query(self, uri: str) -> Result | None:
        """The result for ``uri``, or None while it is pending (or after it expired)."""
        blob = self.redis.get(self.keys.result(uri))
        return Result.decode(blob) if blob is not None else None

    def query_and_delete(self, uri: str) -> Result | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.getdel(self.keys.result(uri))
        pipe.zrem(self.keys.index, uri)
        blob = pipe.execute()[0]
        return Result.decode(blob) if blob is not None else None

    def wait(self, uri: str, timeout: float = 30.0, *, delete: bool = False) -> Result:
        """Poll until ``uri`` has a result; ``TimeoutError`` after ``timeout`` seconds.

        Rides out Redis being unreachable (a restart) until the deadline, then raises
        :class:`QueueUnavailable` instead of ``TimeoutError``. With ``delete`` the result is
        read, then deleted (a reply lost with a dropped connection cannot lose it).
        """
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            down: Exception | None = None
            try:
                result = self.query(uri)
            except RETRYABLE as exc:
                result, down = None, exc
            if result is not None:
                if delete:
                    with contextlib.suppress(*RETRYABLE):  # it expires with its TTL otherwise
                        self.delete(uri)
                return result
            if time.monotonic() > deadline:
                if down is not None:
                    raise QueueUnavailable(
                        f"no result for {uri!r} on stream {self.stream!r} in {timeout:g} s: Redis at "
                        f"{describe(self.redis)} is unreachable ({down})"
                    ) from down
                raise TimeoutError(f"no result for {uri!r} on stream {self.stream!r} in {timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05 if down is None else 0.5)

    def delete(self, uri: str) -> None:
        """Remove the result of ``uri`` (if any) and its index entry."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.result(uri))
        pipe.zrem(self.keys.index, uri)
        pipe.execute()

    def finished(self) -> list[str]:
        """Uris with a stored result, oldest first."""
        return [u.decode() for u in self.redis.zrange(self.keys.index, 0, -1)]

    def count(self) -> int:
        return int(self.redis.zcard(self.keys.index))

    def dequeue(self, limit: int | None = None, *, delete: bool = True) -> dict[str, Result]:
        """All finished results (oldest first, at most ``limit``), removed unless ``delete=False``."""
        uris = self.redis.zrange(self.keys.index, 0, -1 if limit is None else limit - 1)
        out: dict[str, Result] = {}
        for start in range(0, len(uris), 1000):
            chunk = [u.decode() for u in uris[start : start + 1000]]
            pipe = self.redis.pipeline(transaction=False)
            for uri in chunk:
                (pipe.getdel if delete else pipe.get)(self.keys.result(uri))
            blobs = pipe.execute()
            if delete:
                self.redis.zrem(self.keys.index, *chunk)
            for uri, blob in zip(chunk, blobs, strict=True):
                if blob is not None:
                    out[uri] = Result.decode(blob)
        return out

    def results(self, uris: Iterable[str]) -> Iterator[tuple[str, Result | None]]:
        """``(uri, result or None)`` for many uris, fetched in pipelined chunks."""
        pending = list(uris)
        for start in range(0, len(pending), 1000):
            chunk = pending[start : start + 1000]
            blobs = self.redis.mget([self.keys.result(u) for u in chunk])
            for uri, blob in zip(chunk, blobs, strict=True):
                yield uri, (Result.decode(blob) if blob is not None else None)

    def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The oldest entries of the dead-letter stream, fields decoded to text (data stays bytes)."""
        out = []
        for entry_id, fields in self.redis.xrange(self.keys.dead, count=count):
            item: dict[str, Any] = {"id": entry_id.decode()}
            for k, v in fields.items():
                key = k.decode()
                item[key] = v if key == "data" else v.decode(errors="replace")
            out.append(item)
        return out

    def workers(self, max_age_s: float = 10.0) -> dict[str, float]:
        """Workers of this stream seen in the last ``max_age_s`` seconds: name → last heartbeat (ms)."""
        seen = {k.decode(): float(v) for k, v in self.redis.hgetall(self.keys.workers).items()}
        return {k: v for k, v in seen.items() if now_ms() - v <= max_age_s * 1000}

    def stats(self) -> dict[str, int]:
        """Counters kept by all workers of this stream together (``results``, ``duplicates``, ...)."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.stats).items()}
