"""Where a synchronous request chain runs: on the event loop, or in the worker pool.

A hop to the worker pool costs about 50-60 µs of CPU per request on a small machine
(futures, a thread wake-up, the loop's self-pipe, GIL hand-overs), which is as much as a
one-row scikit-learn ``predict``. For such calls the hop is pure overhead: the model
holds the GIL anyway, so the pool buys no parallelism. Long calls are another matter:
on the event loop they would stall every other request (and health checks).

So each endpoint version measures its own ``preprocess → predict → postprocess``. In the
pool it starts, and there it keeps a moving average of the chain's *thread CPU time*
(wall time in the pool would also count the GIL waits behind the event loop, and every
call would look slow under load). After :attr:`InlinePolicy.streak` calls with that
average under ``limit_s`` it runs on the event loop. There it keeps a moving average of
the *wall* time, which is what other requests wait: when that rises over the limit (code
that waits on I/O, a model that got slower) or one call computes over
:data:`STALL_FACTOR` times the limit, it goes back to the pool and the streak it needs to
return doubles (up to :data:`MAX_STREAK`), so nothing can keep stalling the loop. A single
call pre-empted by the OS moves the average a little, not the decision. ``limit_s <= 0``
keeps everything in the pool. No lock: the counters are only ever nudged, and a stale
read costs one call on the other path.

User code that blocks on the event loop itself (a sync ``self.send_request`` in a
pipeline) cannot run there: the data plane raises :class:`RunInPool` instead of waiting
on the loop it is running on, and the endpoint pins itself to the pool and runs that
request again there (once per endpoint version; whatever the hook did before the call
runs twice that one time).
"""

from __future__ import annotations

from typing import Any

from modelyard.errors import ModelLoadError

MAX_STREAK = 1 << 16
ALPHA = 0.1
"""Weight of the newest call in the moving average of CPU time (in the pool)."""
ALPHA_INLINE = 0.02
"""Weight of the newest call in the moving average of wall time (inline): small, because
the OS pre-empts a busy 2-core machine's threads for milliseconds now and then."""
STALL_FACTOR = 20.0
"""One inline call computing this many times longer than the limit counts as a stall."""
OPTION = "inline_max_ms"
"""Endpoint option overriding the replica's ``MODELYARD_INLINE_MAX_MS`` for one version."""


def inline_limit_s(options: dict[str, Any], default_s: float) -> float:
    """The version's inline limit in seconds: its ``inline_max_ms`` option, else the default."""
    raw = options.get(OPTION)
    if raw is None or raw == "":
        return default_s
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ModelLoadError(f"option {OPTION}={raw!r} is not a number") from None
    if not value >= 0:
        raise ModelLoadError(f"option {OPTION}={raw!r} must be at least 0")
    return value / 1000.0


class RunInPool(BaseException):
    """Raised on the event loop by a call that must block: run this chain in the pool instead.

    A ``BaseException`` so that user code's ``except Exception`` cannot swallow it.
    """


class InlinePolicy:
    """Per endpoint version: should the next synchronous chain run inline?"""

    __slots__ = ("average", "inline", "limit_s", "seen", "streak")

    def __init__(self, limit_s: float, streak: int = 32) -> None:
        self.limit_s = limit_s
        self.streak = max(1, streak)
        """Calls to observe in the pool (with a low average) before running inline."""
        self.seen = 0
        self.average = 0.0
        """Moving average in seconds: thread CPU time in the pool, wall time inline."""
        self.inline = False
        """True while chains run on the event loop."""

    def pin_to_pool(self) -> None:
        """Never run inline again (the chain blocks on the event loop)."""
        self.limit_s = 0.0
        self.inline = False

    def observe(self, seconds: float, cpu_seconds: float) -> None:
        """Record one chain's wall and thread CPU time (on whichever path it ran)."""
        limit = self.limit_s
        if limit <= 0:
            return
        if self.inline:
            self.average += ALPHA_INLINE * (seconds - self.average)
            if self.average > limit or cpu_seconds > STALL_FACTOR * limit:
                self.inline = False  # it held the loop up: back to the pool, harder to return
                self.seen = 0
                self.streak = min(self.streak * 2, MAX_STREAK)
            return
        self.average = cpu_seconds if self.seen == 0 else self.average + ALPHA * (cpu_seconds - self.average)
        self.seen += 1
        if self.seen >= self.streak and self.average <= limit:
            self.inline = True
