"""Waiting for a service's revision to move past a number (the config long-poll).

The database is the source of truth because several control plane processes
may share it: a waiter re-reads the revision every :data:`POLL_INTERVAL_S`.
Writes made by *this* process additionally wake waiters at once through
:class:`ChangeNotifier`, so the common single-process case answers without the
polling delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

POLL_INTERVAL_S = 0.05


class ChangeNotifier:
    """Per-service wake-up events for one event loop; :meth:`notify` is thread-safe."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, service: str) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new loop (tests, a restarted server): events of the old one are useless.
            self._loop = loop
            self._events = {}
        event = self._events.get(service)
        if event is None:
            event = self._events[service] = asyncio.Event()
        return event

    async def wait(self, service: str, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; ``True`` when woken by a change of ``service``."""
        event = self._event(service)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _fire(self, service: str) -> None:
        event = self._events.pop(service, None)
        if event is not None:
            event.set()

    def notify(self, service: str) -> None:
        """Wake every waiter on ``service``; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing between the check and the call
            loop.call_soon_threadsafe(self._fire, service)


async def wait_for_revision(
    current_revision: Callable[[], int],
    after: int,
    timeout: float,
    wake: Callable[[float], Awaitable[object]] | None = None,
    gone: Callable[[], Awaitable[bool]] | None = None,
) -> int | None:
    """The revision once it differs from ``after``, or ``None`` after ``timeout`` seconds.

    "Differs", not "is greater": a revision *below* ``after`` means the service
    was deleted and re-created (or the database replaced), and the replica's
    copy belongs to another history; it must get the current one at once.

    ``current_revision`` is a short blocking database call, run in a worker
    thread; ``wake(seconds)`` is an awaitable sleep that may end early;
    ``gone()`` says the client disconnected, which ends the wait (``None``) so a
    restarting fleet of replicas leaves no polls running on for a minute.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        revision = await run_in_threadpool(current_revision)
        if revision != after:
            return revision
        remaining = deadline - loop.time()
        if remaining <= 0 or (gone is not None and await gone()):
            return None
        pause = min(POLL_INTERVAL_S, remaining)
        if wake is not None:
            await wake(pause)
        else:
            await asyncio.sleep(pause)
