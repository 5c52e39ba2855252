"""The queue client: put inputs on a Redis stream, fetch results later.

::

    from modelyard.queue import InputQueue, OutputQueue

    inq = InputQueue("redis://127.0.0.1:6379/0", endpoint="iris/1")
    inq.enqueue("req-1", x=np.array([[5.1, 3.5, 1.4, 0.2]]))
    outq = OutputQueue("redis://127.0.0.1:6379/0")
    outq.query("req-1")            # None while pending, then a Result
    inq.predict({"x": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5)   # enqueue and wait: the value

Backpressure: with ``max_pending`` set, ``enqueue`` refuses to let the stream
hold more than that many unprocessed entries: entries the workers' consumer
group has not read yet (its ``lag``) plus entries read and not yet acknowledged
(its ``pending``), from ``XINFO GROUPS``. Counting the group, not ``XLEN``, keeps
the limit right when workers keep acknowledged entries (``--keep-acked``).
Before any worker made the group, or when Redis cannot tell the lag (an entry
not yet read was deleted), the stream's length is used: every unprocessed entry
is in the stream, so it never under-counts. With ``max_memory_fraction`` set it
also refuses while Redis uses more than that fraction of its ``maxmemory``.
``on_full="wait"`` waits (up to ``full_timeout`` seconds without room, then
raises), adding a batch in pieces as room frees up, so a batch larger than the
limit still goes through; ``on_full="raise"`` raises :class:`QueueFull` at once
and adds nothing of the batch. Nothing is dropped silently.

Redis unreachable (restarting, loading its data): ``enqueue`` retries for up to
``reconnect_timeout`` seconds, then raises :class:`QueueUnavailable` (an
``Unavailable`` that is also a ``redis.ConnectionError``) listing the ids it did
add. Ids returned mean the entries are on the stream; a call that raised may
still have added some (a reply lost with the connection), and a retry after
such a loss can add an input twice. Workers store one result per uri
(``SET NX``), so an input enqueued twice is answered once (see docs/queue.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import redis

from modelyard.errors import Overloaded
from modelyard.queue import codec
from modelyard.queue.connect import QueueUnavailable, call_retrying, connect, describe, now_ms
from modelyard.queue.keys import DEFAULT_GROUP, DEFAULT_STREAM, QueueKeys
from modelyard.queue.results import OutputQueue

__all__ = ["InputQueue", "OutputQueue", "QueueFull", "QueueUnavailable", "now_ms"]

OnFull = Literal["wait", "raise"]
T = TypeVar("T")


class QueueFull(Overloaded):
    """The input stream is over its pending limit (or Redis over its memory fraction)."""

    kind = "overloaded"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        group: str = DEFAULT_GROUP,
        reconnect_timeout: float = 10.0,
        client: redis.Redis | None = None,
    ) -> None:
        if on_full not in ("wait", "raise"):
            raise ValueError(f"on_full must be 'wait' or 'raise', not {on_full!r}")
        if reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout must be at least 0, not {reconnect_timeout}")
        self.redis: Any = connect(redis_url, client)  # redis-py's reply types are unions
        self.keys = QueueKeys(stream)
        self.stream = stream
        self.endpoint = endpoint
        """Default endpoint (``iris/1``) written on each entry; None leaves it to the worker."""
        self.group = group
        """The workers' consumer group (``queue-worker --group``) whose backlog ``max_pending`` limits."""
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be at least 1 (or None for no limit), not {max_pending}")
        self.max_pending = max_pending
        self.max_memory_fraction = max_memory_fraction
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.check_interval = check_interval
        self.reconnect_timeout = reconnect_timeout
        """How long ``enqueue`` retries while Redis is unreachable before :class:`QueueUnavailable`."""
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
        """Put many ``(uri, {name: tensor})`` inputs on the stream, pipelined; their entry ids.

        ``on_full="raise"``: the whole batch must fit now, else :class:`QueueFull` and nothing
        is added. ``on_full="wait"``: pieces of at most ``chunk`` entries are added as room
        frees up, each no larger than the room there is, so any batch goes through in time.
        Each piece is retried while Redis is unreachable, up to ``reconnect_timeout`` seconds.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        for uri, _ in pairs:
            if not isinstance(uri, str) or not uri:
                raise ValueError(f"uri must be a non-empty string, not {uri!r}")
        if not pairs:
            return []
        ids: list[str] = []
        if self.on_full == "raise":
            self._retrying(lambda: self.wait_for_room(len(pairs)), ids, len(pairs))  # all or nothing

        def piece() -> list[str]:
            size = min(chunk, len(pairs) - len(ids))
            if self.on_full == "wait":
                size = min(size, self.wait_for_some_room(size))
            return self._add(pairs[len(ids) : len(ids) + size], endpoint)

        while len(ids) < len(pairs):
            ids.extend(self._retrying(piece, ids, len(pairs)))
        return ids

    def _retrying(self, fn: Callable[[], T], added: list[str], total: int) -> T:
        def failed(exc: Exception) -> QueueUnavailable:
            return QueueUnavailable(
                f"Redis at {describe(self.redis)} did not answer for {self.reconnect_timeout:g} s while "
                f"adding to stream {self.stream!r} ({exc}); {len(added)} of the {total} inputs were added "
                f"(ids in .added), the others may or may not be: enqueue them again under the same uris",
                added=added,
            )

        return call_retrying(fn, timeout=self.reconnect_timeout, failed=failed)

    def _add(self, batch: list[tuple[str, Mapping[str, Any]]], endpoint: str | None) -> list[str]:
        endpoint = endpoint or self.endpoint
        entries = []
        for uri, tensors in batch:
            fields: dict[str, Any] = {"uri": uri, "data": codec.encode_inputs(tensors)}
            if endpoint:
                fields["endpoint"] = endpoint
            entries.append(fields)
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
        """Entries not yet processed: waiting for a worker, or read by one and not acknowledged.

        The consumer group's ``lag + pending`` (``XINFO GROUPS``, Redis 7), capped by the
        stream's length; the length alone before the group exists or when Redis reports the
        lag as unknown (nil: an entry not yet read was deleted). Every unprocessed entry is in
        the stream, so the length is an upper bound, exact when workers delete what they
        acknowledge (the default).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xinfo_groups(self.stream)
        length, groups = pipe.execute(raise_on_error=False)
        if isinstance(length, Exception):
            raise length
        count = int(length)
        if isinstance(groups, redis.ResponseError):  # no such stream yet
            groups = []
        elif isinstance(groups, Exception):
            raise groups
        for group in groups:
            if _text(group.get("name")) == self.group:
                lag = group.get("lag")
                if lag is not None:
                    count = min(count, int(lag) + int(group.get("pending") or 0))
                break
        self._length = count
        self._length_at = time.monotonic()
        return count

    def room(self) -> int | None:
        """How many entries fit under ``max_pending`` now (None: no limit)."""
        if self.max_pending is None:
            return None
        return max(0, self.max_pending - self.pending())

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
        """Return when ``n`` more entries fit; raise :class:`QueueFull` (at once or on timeout).

        ``n`` above ``max_pending`` can never fit: that raises at once in either mode.
        """
        if self.max_pending is not None and n > self.max_pending:
            raise QueueFull(
                f"{n} entries can never fit in stream {self.stream!r}: its limit is "
                f"{self.max_pending} pending entries (enqueue them in smaller batches, or with "
                f"on_full='wait', which adds them as room frees up)",
                retry_after=1,
            )
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

    def wait_for_some_room(self, want: int) -> int:
        """Wait until at least one entry fits (as :meth:`wait_for_room`); how many, up to ``want``."""
        self.wait_for_room(1)
        if self.max_pending is None:
            return want
        return max(1, min(want, self.max_pending - self._length))

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
        queued; its result may still arrive under ``uri``); :class:`QueueUnavailable` when
        Redis stays unreachable (``reconnect_timeout`` to enqueue, ``timeout`` to wait).
        """
        uri = uri or uuid.uuid4().hex
        self.enqueue_batch([(uri, {**(inputs or {}), **tensors})], endpoint=endpoint)
        result = OutputQueue(stream=self.stream, client=self.redis).wait(uri, timeout=timeout, delete=delete)
        return result.unwrap()
