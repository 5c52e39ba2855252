"""The queue client: put inputs on a Redis stream, fetch results later.

::

    from modelyard.queue import InputQueue, OutputQueue

    inq = InputQueue("redis://127.0.0.1:6379/0", endpoint="iris/1")
    inq.enqueue("req-1", x=np.array([[5.1, 3.5, 1.4, 0.2]]))
    outq = OutputQueue("redis://127.0.0.1:6379/0")
    outq.query("req-1")            # None while pending, then a Result
    inq.predict({"x": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5)   # enqueue and wait: the value

Backpressure: with ``max_pending`` set, ``enqueue`` refuses to let the stream
hold more than that many unprocessed entries (workers delete the entries they
acknowledge, so the stream's length is the backlog); with
``max_memory_fraction`` set it also refuses while Redis uses more than that
fraction of its ``maxmemory``. ``on_full="wait"`` waits (up to
``full_timeout`` seconds, then raises), ``on_full="raise"`` raises
:class:`QueueFull` at once. Nothing is dropped silently.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import redis

from modelyard.errors import Overloaded
from modelyard.queue import codec
from modelyard.queue.keys import DEFAULT_STREAM, QueueKeys, Result

OnFull = Literal["wait", "raise"]


class QueueFull(Overloaded):
    """The input stream is over its pending limit (or Redis over its memory fraction)."""

    kind = "overloaded"


def _connect(redis_url: str | None, client: redis.Redis | None) -> redis.Redis:
    if client is not None:
        return client
    if redis_url is None:
        from modelyard.settings import Settings

        redis_url = Settings().redis_url
    return redis.Redis.from_url(redis_url)


def now_ms() -> float:
    return time.time() * 1000.0


class InputQueue:
    """Producer side of one input stream."""

    def __init__(
        self,
        redis_url: str | None = None,
        stream: str = DEFAULT_STREAM,
        *,
        endpoint: str | None = None,
        max_pending: int | None = 100_000,
        max_memory_fraction: float | None = 0.9,
        on_full: OnFull = "wait",
        full_timeout: float = 30.0,
        check_interval: float = 0.05,
        client: redis.Redis | None = None,
    ) -> None:
        if on_full not in ("wait", "raise"):
            raise ValueError(f"on_full must be 'wait' or 'raise', not {on_full!r}")
        self.redis: Any = _connect(redis_url, client)  # redis-py's reply types are unions
        self.keys = QueueKeys(stream)
        self.stream = stream
        self.endpoint = endpoint
        """Default endpoint (``iris/1``) written on each entry; None leaves it to the worker."""
        self.max_pending = max_pending
        self.max_memory_fraction = max_memory_fraction
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.check_interval = check_interval
        self._length = 0
        self._length_at = 0.0
        self._memory_at = 0.0
        self._memory_full: str | None = None

    def close(self) -> None:
        self.redis.close()

    # -- enqueue ---------------------------------------------------------------------------------
    def enqueue(self, uri: str, /, **tensors: Any) -> str:
        """Put one input on the stream under ``uri``; returns the stream entry id."""
        return self.enqueue_batch([(uri, tensors)])[0]

    def enqueue_batch(
        self,
        items: Iterable[tuple[str, Mapping[str, Any]]] | Mapping[str, Mapping[str, Any]],
        *,
        endpoint: str | None = None,
        chunk: int = 500,
    ) -> list[str]:
        """Put many ``(uri, {name: tensor})`` inputs on the stream, pipelined; their entry ids."""
        pairs = items.items() if isinstance(items, Mapping) else items
        ids: list[str] = []
        batch: list[tuple[str, Mapping[str, Any]]] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= chunk:
                ids.extend(self._add(batch, endpoint))
                batch = []
        if batch:
            ids.extend(self._add(batch, endpoint))
        return ids

    def _add(self, batch: list[tuple[str, Mapping[str, Any]]], endpoint: str | None) -> list[str]:
        endpoint = endpoint or self.endpoint
        entries = []
        for uri, tensors in batch:
            if not isinstance(uri, str) or not uri:
                raise ValueError(f"uri must be a non-empty string, not {uri!r}")
            fields: dict[str, Any] = {"uri": uri, "data": codec.encode_inputs(tensors)}
            if endpoint:
                fields["endpoint"] = endpoint
            entries.append(fields)
        self.wait_for_room(len(entries))
        pipe = self.redis.pipeline(transaction=False)
        t = repr(now_ms())
        for fields in entries:
            fields["t"] = t
            pipe.xadd(self.stream, fields)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]
        self._length += len(ids)
        return ids

    # -- backpressure ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Entries in the stream: not yet processed, or being processed."""
        self._length = int(self.redis.xlen(self.stream))
        self._length_at = time.monotonic()
        return self._length

    def _full(self, n: int) -> str | None:
        now = time.monotonic()
        if self.max_pending is not None:
            if now - self._length_at > self.check_interval or self._length + n > self.max_pending:
                self.pending()
            if self._length + n > self.max_pending:
                return (
                    f"stream {self.stream!r} holds {self._length} pending entries; "
                    f"{n} more would pass the limit of {self.max_pending}"
                )
        if self.max_memory_fraction is not None:
            if now - self._memory_at > max(self.check_interval, 0.25) or self._memory_full:
                self._memory_at = now
                info = self.redis.info("memory")
                used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
                self._memory_full = None
                if limit and used > self.max_memory_fraction * limit:
                    self._memory_full = (
                        f"Redis uses {used} of its maxmemory {limit} bytes, above the "
                        f"fraction {self.max_memory_fraction:g}"
                    )
            return self._memory_full
        return None

    def wait_for_room(self, n: int = 1) -> None:
        """Return when ``n`` more entries fit; raise :class:`QueueFull` (at once or on timeout)."""
        reason = self._full(n)
        if reason is None:
            return
        if self.on_full == "raise":
            raise QueueFull(reason, retry_after=1)
        deadline = time.monotonic() + self.full_timeout
        pause = 0.005
        while reason is not None:
            if time.monotonic() > deadline:
                raise QueueFull(f"{reason} (waited {self.full_timeout:g} s)", retry_after=1)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
            self._length_at = 0.0
            reason = self._full(n)

    # -- request/response ------------------------------------------------------------------------
    def predict(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        uri: str | None = None,
        endpoint: str | None = None,
        delete: bool = True,
        **tensors: Any,
    ) -> Any:
        """Enqueue one input and wait for its result: the value, or the error raised.

        ``TimeoutError`` when no result arrives within ``timeout`` seconds (the input stays
        queued; its result may still arrive under ``uri``).
        """
        uri = uri or uuid.uuid4().hex
        self.enqueue_batch([(uri, {**(inputs or {}), **tensors})], endpoint=endpoint)
        result = OutputQueue(stream=self.stream, client=self.redis).wait(uri, timeout=timeout, delete=delete)
        return result.unwrap()


class OutputQueue:
    """Consumer side: results by uri. Results expire after the worker's TTL."""

    def __init__(
        self,
        redis_url: str | None = None,
        stream: str = DEFAULT_STREAM,
        *,
        client: redis.Redis | None = None,
    ) -> None:
        self.redis: Any = _connect(redis_url, client)  # redis-py's reply types are unions
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
        """Poll until ``uri`` has a result; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            result = self.query_and_delete(uri) if delete else self.query(uri)
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {uri!r} on stream {self.stream!r} in {timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

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
