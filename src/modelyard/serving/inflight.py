"""What is running now: admission per worker, and per endpoint version its requests, deadlines and
the worker threads that still run its code.

Three promises rest on this module:

* **Admission** (:class:`Admission`): a worker runs at most ``Settings.max_inflight``
  inference requests at once. Past it a request is refused at once with 503 + ``Retry-After``
  instead of joining a queue, so the admitted ones keep a bounded latency (Little's law: the
  wait grows with what is in flight, not with what arrives). Health, status and metrics never
  reach it; nested ``send_request`` calls and shadow copies are not counted (a pipeline must
  not be refused half-way by its own inner call).
* **Deadlines** (:class:`Deadline`): past the endpoint's ``timeout_s`` the request's task is
  cancelled and the caller gets 504. A timer on the request's own task, like
  ``asyncio.timeout`` (3.11+) but without one more task per request, and on 3.10 too.
* **Safe retirement** (:class:`VersionInflight`): a replaced version is unloaded only once none
  of its requests runs, and none of its code runs in a worker thread either. A cancelled await
  on ``run_in_executor`` returns at once while the thread goes on calling ``predict``; unloading
  the model under it could crash native code, so such threads are counted until they return.
  Retiring waits for the requests at most ``retire_wait_s``; past it they are cancelled (503 +
  ``Retry-After``: the next try reaches the new version), never the threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from modelyard.errors import DeadlineExceeded, ModelLoadError, ModelyardError, Overloaded, Unavailable
from modelyard.serving.inline import number_option

log = logging.getLogger("modelyard.serving")

T = TypeVar("T")

RETRY_AFTER_S = 1.0
"""What a refused caller is told to wait: a request takes milliseconds to seconds to clear."""
TIMEOUT_OPTION = "timeout_s"
"""Endpoint option overriding ``Settings.request_timeout_s`` for one version (0: no deadline)."""
STUCK_WARNING_S = 10.0
"""Retirement logs a warning when worker threads still run the version's code this long after
its requests were gone or cancelled (a hung ``predict`` keeps its model in memory)."""


def timeout_option(options: dict[str, Any], default_s: float) -> float:
    """The version's deadline in seconds: its ``timeout_s`` option, else ``default_s``."""
    value = number_option(options, TIMEOUT_OPTION)
    if value is None:
        return default_s
    if not (value >= 0 and math.isfinite(value)):
        raise ModelLoadError(
            f"option {TIMEOUT_OPTION}={options[TIMEOUT_OPTION]!r} must be a number of seconds, "
            "at least 0 (0: no deadline)"
        )
    return value


class Admission:
    """The per-worker limit on inference requests in flight (see the module doc)."""

    __slots__ = ("inflight", "limit", "shed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """0: no limit."""
        self.inflight = 0
        self.shed = 0
        """Requests refused since start."""

    def enter(self) -> None:
        """Count one more request in flight, or raise :class:`Overloaded` when full."""
        if 0 < self.limit <= self.inflight:
            self.shed += 1
            raise Overloaded(
                f"this replica worker runs {self.inflight} requests (max_inflight {self.limit}); retry later",
                retry_after=RETRY_AFTER_S,
            )
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    def snapshot(self) -> dict[str, int]:
        """For ``/status``: this worker's requests in flight, its limit and what it refused."""
        return {"inflight": self.inflight, "max_inflight": self.limit, "shed": self.shed}


class Deadline:
    """Cancels ``task`` after ``seconds`` unless :meth:`cancel` comes first; ``fired`` says which."""

    __slots__ = ("_handle", "_task", "fired", "seconds")

    def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
        self._task = task
        self.seconds = seconds
        self.fired = False
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


def _absorb(task: asyncio.Task[Any], ours: int) -> bool:
    """Withdraw ``ours`` cancellations of ``task``; True when nobody else cancelled it too.

    On 3.11+ a task counts the cancellations asked of it (``asyncio.timeout`` and task groups
    read the count), so a cancellation turned into an answer must be withdrawn; 3.10 has no count.
    """
    uncancel: Callable[[], int] | None = getattr(task, "uncancel", None)
    if uncancel is None:
        return True
    remaining = task.cancelling()
    for _ in range(ours):
        remaining = uncancel()
    return remaining <= 0


class VersionInflight:
    """One endpoint version's requests in flight and the worker threads still running its code."""

    __slots__ = ("_evicted", "_idle", "_tasks", "key", "requests", "threads")

    def __init__(self, key: str) -> None:
        self.key = key
        self.requests = 0
        self.threads = 0
        """Worker threads still running this version's code after their request stopped waiting."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: dict[asyncio.Task[Any], int] = {}
        """The tasks of requests in flight (a pipeline's task may be in twice), to evict them."""
        self._evicted: set[asyncio.Task[Any]] | None = None
        """Tasks cancelled by :meth:`drain` past its wait; ``None`` until then."""

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def enter(self, track: bool = True) -> asyncio.Task[Any] | None:
        """One more request; its task (``track``) so it can be evicted and given a deadline."""
        if self._evicted is not None:
            raise Unavailable(f"endpoint {self.key!r} is being unloaded; retry", retry_after=RETRY_AFTER_S)
        self.requests += 1
        self._idle.clear()
        task = asyncio.current_task() if track else None
        if task is not None:
            self._tasks[task] = self._tasks.get(task, 0) + 1
        return task

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        self.requests -= 1
        if task is not None:
            left = self._tasks.pop(task, 1) - 1
            if left:
                self._tasks[task] = left
        if self.requests == 0 and self.threads == 0:
            self._idle.set()

    def cancelled(self, task: asyncio.Task[Any] | None, deadline: Deadline | None) -> ModelyardError | None:
        """The answer for a request whose task was cancelled: 504 past its deadline, 503 when
        :meth:`drain` evicted it; ``None`` when someone else cancelled it (re-raise then)."""
        if task is None:
            return None
        timed_out = deadline is not None and deadline.fired
        evicted = self._evicted is not None and task in self._evicted
        if not (timed_out or evicted) or not _absorb(task, int(timed_out) + int(evicted)):
            return None
        if timed_out:
            assert deadline is not None
            return DeadlineExceeded(
                f"endpoint {self.key!r} did not answer within its deadline of {deadline.seconds:g} s"
            )
        return Unavailable(
            f"endpoint {self.key!r} was replaced or removed while this request ran; retry",
            retry_after=RETRY_AFTER_S,
        )

    async def in_pool(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``executor``. If the wait is cancelled while the thread already runs
        it, the thread is counted until it returns, so the model is not unloaded under it."""
        future = executor.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # started (or just finished): it still uses this version
                self.threads += 1
                self._idle.clear()
                loop = asyncio.get_running_loop()
                future.add_done_callback(lambda _: _call_soon(loop, self._thread_returned))
            raise

    def _thread_returned(self) -> None:
        self.threads -= 1
        if self.requests == 0 and self.threads == 0:
            self._idle.set()

    async def drain(self, wait_s: float) -> None:
        """Return once nothing of this version runs: its requests finished (those still running
        after ``wait_s`` are cancelled) and no worker thread runs its code."""
        if not self.idle:
            try:
                await asyncio.wait_for(self._idle.wait(), wait_s)
            except asyncio.TimeoutError:
                self._evict()
        warned = False
        while not self.idle:
            try:
                await asyncio.wait_for(self._idle.wait(), STUCK_WARNING_S)
            except asyncio.TimeoutError:
                if not warned:
                    warned = True
                    log.warning(
                        "endpoint %s: %d request(s) and %d worker thread(s) still run its code; "
                        "it is unloaded when they return",
                        self.key,
                        self.requests,
                        self.threads,
                    )

    def _evict(self) -> None:
        self._evicted = set(self._tasks)
        if self._tasks:
            log.warning(
                "endpoint %s: cancelling %d request(s) still running after the retire wait",
                self.key,
                len(self._tasks),
            )
        for task in self._evicted:
            task.cancel()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed (shutdown): nothing is left to unload
        pass
