"""Opening the queue clients' Redis connection, and riding out a Redis restart on the client side.

redis-py clients made with ``from_url`` do not retry: while Redis is down (restarting,
loading its append-only file, failing over) every command raises ``redis.ConnectionError``
at once. The queue clients retry the calls that must not be given up lightly (adding
inputs, waiting for a result) for a bounded time, then raise :class:`QueueUnavailable`,
which names the Redis server, what was being done and for how long it was tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from modelyard.errors import Unavailable

T = TypeVar("T")

RETRYABLE = (redis.ConnectionError, redis.TimeoutError)
"""Redis unreachable or not answering; ``BusyLoadingError`` (loading its data) is a ConnectionError."""


class QueueUnavailable(Unavailable, redis.ConnectionError):
    """Redis did not answer for the client's ``reconnect_timeout``.

    An :class:`~modelyard.errors.Unavailable` (kind ``unavailable``) that is also a
    ``redis.ConnectionError``, so code written against either keeps catching it. ``added``
    holds the entry ids a failed ``enqueue_batch`` did add before giving up: those inputs are
    on the stream; of the rest, some may be too (a reply lost with the connection).
    """

    kind = "unavailable"

    def __init__(self, message: str, *, added: list[str] | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.added = list(added or [])


def connect(redis_url: str | None, client: redis.Redis | None) -> redis.Redis:
    if client is not None:
        return client
    if redis_url is None:
        from modelyard.settings import Settings

        redis_url = Settings().redis_url
    return redis.Redis.from_url(redis_url)


def describe(client: Any) -> str:
    """``host:port`` (or the socket path) of a client, for error messages; never its password."""
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return "the configured address"
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}"


def call_retrying(
    fn: Callable[[], T], *, timeout: float, failed: Callable[[Exception], QueueUnavailable]
) -> T:
    """``fn()``, called again (backing off 50 ms doubling to 1 s) while Redis is unreachable.

    After ``timeout`` seconds of failures the error ``failed`` builds from the last one is
    raised, chained to it. ``timeout`` 0 tries once.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        try:
            return fn()
        except QueueUnavailable:
            raise
        except RETRYABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise failed(exc) from exc
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)


def now_ms() -> float:
    return time.time() * 1000.0
