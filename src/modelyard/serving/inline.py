"""Where a synchronous request chain runs: on the event loop, or in the worker pool.

A hop to the worker pool costs about 50-60 µs of CPU per request on a small machine
(futures, a thread wake-up, the loop's self-pipe, GIL hand-overs), which is as much as a
one-row scikit-learn ``predict``. For such calls the hop is pure overhead: the model
holds the GIL anyway, so the pool buys no parallelism. Long calls are another matter:
on the event loop they would stall every other request (and health checks).

So each endpoint version measures its own ``preprocess → predict → postprocess`` in *thread
CPU time*: wall time would also count the waits for the GIL behind other threads and the
moments the OS pre-empts the thread for another process, so on a loaded machine every call
would look slow. It starts in the pool; after :attr:`InlinePolicy.streak` calls with a moving
average under :data:`PROBE_FACTOR` times ``limit_s`` (the same chain costs up to twice the CPU
on a pool thread, with cold caches on another core, as on the loop) it is *tried* on the
event loop, where its first :data:`PROBE_CALLS` calls are all measured and must average
under ``limit_s`` for it to stay. There it goes back to the pool, and the
streak it needs to return doubles (up to :data:`MAX_STREAK`) so nothing can keep stalling the
loop, when the average CPU time rises over the limit, when one call computes over
:data:`STALL_FACTOR` times the limit, or when a call *blocked* (the thread gave the CPU up of
its own accord: a voluntary context switch, read from ``getrusage``, while it was off the CPU
longer than :data:`BLOCKED_S`), which is code waiting on I/O or a lock, never acceptable on the
loop. Pre-emption by the OS is an involuntary switch and does not count. Inline calls are
measured one in :data:`SAMPLE_EVERY` (the measurement costs a few µs). ``limit_s <= 0`` keeps
everything in the pool. No lock: the counters are only ever nudged, and a stale read costs one
call on the other path.

In the pool, the chains of one endpoint version run one at a time once they are measured
*CPU-bound* (an average of :data:`CPU_BOUND_S` or more of CPU a call): parallel Python threads
of CPU-bound code only take turns at the GIL, and worse, a model that drops the GIL for short
stretches (a tree ensemble, tree by tree) waits for it back each time — a 50-tree random
forest served 129 requests/s with six threads at once, 174-223/s one at a time. Chains that
mostly wait (I/O in a hook) are not limited, nor pipelines (code that calls
``send_request``); the endpoint's ``threads`` option sets a fixed limit instead. Requests
waiting for their turn wait in a bounded queue (option ``max_queue``, default 256, as a
batcher's): a full one answers 503 + Retry-After at once, never an unbounded wait.

User code that blocks on the event loop itself (a sync ``self.send_request`` in a
pipeline) cannot run there: the data plane raises :class:`RunInPool` instead of waiting
on the loop it is running on, and the endpoint pins itself to the pool and runs that
request again there (once per endpoint version; whatever the hook did before the call
runs twice that one time).
"""

from __future__ import annotations

import resource
from typing import Any

from modelyard.errors import ModelLoadError

MAX_STREAK = 1 << 16
ALPHA = 0.1
"""Weight of the newest measured call in the moving average of CPU time."""
STALL_FACTOR = 20.0
"""One inline call computing this many times longer than the limit counts as a stall."""
BLOCKED_S = 0.002
"""An inline call that switched out voluntarily and spent this long off the CPU blocked."""
SAMPLE_EVERY = 4
"""Inline calls measured: one in this many (pool calls: all)."""
WARMUP = 3
"""First calls not measured: imports, lazy initialisation and cold caches are not the model."""
PROBE_FACTOR = 4.0
"""Pool average (CPU) under this many times the limit: try the chain on the event loop."""
PROBE_CALLS = 4
"""Calls on the event loop measured one by one after a move there, before sampling."""
CPU_BOUND_S = 0.0005
"""Average CPU a call from which a version's chains run one at a time in the pool."""
OPTION = "inline_max_ms"
"""Endpoint option overriding the replica's ``MODELYARD_INLINE_MAX_MS`` for one version."""
THREADS_OPTION = "threads"
"""Endpoint option: how many of its synchronous chains may run in the pool at once."""

try:
    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD  # Linux
except AttributeError:  # pragma: no cover - macOS and others: blocking is not detected
    _RUSAGE_THREAD = None


def voluntary_switches() -> int:
    """Context switches this thread made of its own accord (waiting on I/O, a lock, the GIL)."""
    if _RUSAGE_THREAD is None:  # pragma: no cover
        return 0
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


def number_option(options: dict[str, Any], key: str) -> float | None:
    """An endpoint option as a number (``None`` when unset); ModelLoadError when it is not one."""
    raw = options.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ModelLoadError(f"option {key}={raw!r} is not a number") from None


def pool_threads(options: dict[str, Any], calls_endpoints: bool) -> int | None:
    """The ``threads`` option: chains of the version in the pool at once; ``None``: not set
    (measured: one at a time while CPU-bound, else no limit; pipelines never limited)."""
    value = number_option(options, THREADS_OPTION)
    if value is None:
        return None
    if value < 1 or not value.is_integer():
        raw = options[THREADS_OPTION]
        raise ModelLoadError(f"option {THREADS_OPTION}={raw!r} must be a whole number of at least 1")
    return int(value)


def inline_limit_s(options: dict[str, Any], default_s: float) -> float:
    """The version's inline limit in seconds: its ``inline_max_ms`` option, else the default."""
    value = number_option(options, OPTION)
    if value is None:
        return default_s
    if not value >= 0:
        raise ModelLoadError(f"option {OPTION}={options[OPTION]!r} must be at least 0")
    return value / 1000.0


class RunInPool(BaseException):
    """Raised on the event loop by a call that must block: run this chain in the pool instead.

    A ``BaseException`` so that user code's ``except Exception`` cannot swallow it.
    """


class InlinePolicy:
    """Per endpoint version: should the next synchronous chain run inline?"""

    __slots__ = ("average", "calls", "inline", "limit_s", "sample", "seen", "streak")

    def __init__(self, limit_s: float, streak: int = 32) -> None:
        self.limit_s = limit_s
        self.streak = max(1, streak)
        """Measured calls with a low average needed in the pool before running inline."""
        self.seen = 0
        self.average = 0.0
        """Moving average of the chain's thread CPU time, in seconds."""
        self.inline = False
        """True while chains run on the event loop."""
        self.sample = 0
        self.calls = 0

    @property
    def cpu_bound(self) -> bool:
        """Measured to compute for :data:`CPU_BOUND_S` or more a call (pool: one at a time)."""
        return self.seen > 0 and self.average >= CPU_BOUND_S

    def measure(self) -> bool:
        """Whether to measure the next call: not the first few, then every pool call and one
        inline call in :data:`SAMPLE_EVERY`."""
        if self.calls < WARMUP:
            self.calls += 1
            return False
        if not self.inline or self.seen < PROBE_CALLS:
            return True
        self.sample += 1
        return self.sample % SAMPLE_EVERY == 0

    def pin_to_pool(self) -> None:
        """Never run inline again (the chain blocks on the event loop)."""
        self.limit_s = 0.0
        self.inline = False

    def observe(self, seconds: float, cpu_seconds: float, switches: int = 0) -> None:
        """Record one chain's wall time, thread CPU time and voluntary context switches."""
        self.average = cpu_seconds if self.seen == 0 else self.average + ALPHA * (cpu_seconds - self.average)
        self.seen += 1
        limit = self.limit_s
        if limit <= 0:
            return
        if self.inline:
            blocked = switches > 0 and seconds - cpu_seconds > BLOCKED_S
            settled = self.seen >= PROBE_CALLS
            if blocked or cpu_seconds > STALL_FACTOR * limit or (settled and self.average > limit):
                self.inline = False  # it held the loop up: back to the pool, harder to return
                self.seen = 0
                self.streak = min(self.streak * 2, MAX_STREAK)
            return
        if self.seen >= self.streak and self.average <= PROBE_FACTOR * limit:
            self.inline = True  # try it where it would run: measured again from scratch
            self.seen = 0
            self.sample = 0

    def snapshot(self) -> dict[str, Any]:
        """For ``/status``: where the chain runs and what it costs."""
        return {
            "inline": self.inline,
            "cpu_ms": round(self.average * 1000, 3),
            "cpu_bound": self.cpu_bound,
            "inline_max_ms": self.limit_s * 1000,
        }
