"""Request metrics buffered in the process, moved into Prometheus values in bulk.

With several workers every Prometheus value lives in an mmap-backed file and each write
costs ~3 µs (~30 µs a request unbuffered, ``bench/metrics_overhead.py``). A :class:`Tally`
or :class:`Spread` wraps one labelled child: the hot path adds under one uncontended lock,
and :meth:`flush` (called by :class:`modelyard.metrics.Metrics`) pays the file writes once
per interval instead of once per request.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any


class Tally:
    """Adds to one counter or gauge child, kept here until :meth:`flush` (see the module doc)."""

    __slots__ = ("_child", "_lock", "_pending")

    def __init__(self, child: Any, lock: threading.Lock) -> None:
        self._child = child
        self._lock = lock
        self._pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._pending += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._pending -= amount

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, 0.0
        if pending:
            self._child.inc(pending)


class Spread:
    """Observations of one histogram child, bucketed here until :meth:`flush`.

    Buckets exactly as ``Histogram.observe`` does (the first upper bound ``>=`` the value),
    then adds the per-bucket counts and the sum to the child's own values.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_lock", "_sum")

    def __init__(self, child: Any, lock: threading.Lock) -> None:
        self._child = child
        self._lock = lock
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        index = bisect_left(self._bounds, amount)
        with self._lock:
            if index < len(self._counts):  # NaN lands nowhere, as in Histogram.observe
                self._counts[index] += 1
            self._sum += amount

    def flush(self) -> None:
        with self._lock:
            counts, total = self._counts, self._sum
            if not any(counts) and not total:
                return
            self._counts, self._sum = [0] * len(counts), 0.0
        child = self._child
        child._sum.inc(total)
        for bucket, count in zip(child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
