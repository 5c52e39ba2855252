"""Waiting for a service's revision to move past a number (the config long-poll).

The database is the source of truth because several control plane processes
may share it, so the revision is re-read every :data:`POLL_INTERVAL_S`; writes
made by *this* process additionally wake waiters at once, so the common
single-process case answers without the polling delay.

:class:`RevisionWatch` reads each watched service's revision ONCE per interval
for the whole process, however many replicas long-poll it (a hundred replicas
would otherwise be two thousand queries a second), and only while somebody
waits: nothing is kept for a service nobody waits on, and nothing at all for a name that
is not a service (the long-poll is open to callers without a token).

"Differs", not "is greater": a revision *below* ``after`` means the service was
deleted and re-created (or the database replaced), and the replica's copy
belongs to another history; it must get the current one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

POLL_INTERVAL_S = 0.05
GONE_CHECK_S = 1.0
"""How often a long-poll checks that its caller is still connected."""


class _Watched:
    """One service's shared poll: the revision last read and an event set when it moves."""

    __slots__ = ("changed", "error", "poke", "revision", "task", "waiters")

    def __init__(self) -> None:
        self.revision: int | None = None
        self.error: BaseException | None = None
        """What the last read raised (the service was removed): handed to every waiter."""
        self.changed = asyncio.Event()
        self.poke = asyncio.Event()
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None

    def publish(self, revision: int | None, error: BaseException | None) -> None:
        if revision != self.revision or type(error) is not type(self.error):
            self.revision, self.error = revision, error
            self.changed.set()
            self.changed = asyncio.Event()


class RevisionWatch:
    """Shared revision polls for one process's long-polls; :meth:`notify` is thread-safe."""

    def __init__(self, read: Callable[[str], int], interval_s: float = POLL_INTERVAL_S) -> None:
        self._read = read
        """Blocking: the service's revision from the database (raises when it does not exist)."""
        self.interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._services: dict[str, _Watched] = {}

    def _watched(self, service: str) -> _Watched:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, a restarted server): start afresh
            self._loop = loop
            self._services = {}
        watched = self._services.get(service)
        if watched is None:
            watched = self._services[service] = _Watched()
        return watched

    async def _read_once(self, service: str) -> tuple[int | None, BaseException | None]:
        try:
            return await run_in_threadpool(self._read, service), None
        except Exception as exc:  # NotFound for a removed service; the waiters re-raise it
            return None, exc

    async def _poll(self, service: str, watched: _Watched) -> None:
        while watched.waiters > 0:
            watched.publish(*await self._read_once(service))
            watched.poke.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watched.poke.wait(), self.interval_s)
        watched.task = None

    async def wait(
        self,
        service: str,
        after: int,
        timeout: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> int | None:
        """The revision once it differs from ``after``, or ``None`` after ``timeout`` seconds
        (or once ``gone()`` says the caller left); raises what reading it raises (NotFound)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # one fresh read for this caller: the shared value may be an interval old; a service
        # that does not exist raises here, before anything is kept for its name
        revision, error = await self._read_once(service)
        if error is not None:
            raise error
        watched = self._watched(service)
        watched.publish(revision, error)
        watched.waiters += 1
        try:
            if watched.task is None:
                watched.task = loop.create_task(self._poll(service, watched))
            while True:
                if watched.error is not None:
                    raise watched.error
                if watched.revision is not None and watched.revision != after:
                    return watched.revision
                remaining = deadline - loop.time()
                if remaining <= 0 or (gone is not None and await gone()):
                    return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(watched.changed.wait(), min(GONE_CHECK_S, remaining))
        finally:
            watched.waiters -= 1
            if watched.waiters == 0 and self._services.get(service) is watched:
                del self._services[service]  # its poll ends by itself; nothing stays per name

    def _poke(self, service: str) -> None:
        watched = self._services.get(service)
        if watched is not None:
            watched.poke.set()

    def notify(self, service: str) -> None:
        """A write of this process changed ``service``: re-read it now; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing between the check and the call
            loop.call_soon_threadsafe(self._poke, service)
