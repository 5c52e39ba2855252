"""Prometheus metrics of a queue worker, on a registry the caller passes in (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """Counters and gauges of one worker process (all its consumers)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "modelyard_queue_processed_total",
            "Queue entries answered with a value.",
            ["stream", "endpoint"],
            registry=r,
        )
        self.failed = Counter(
            "modelyard_queue_failed_total",
            "Queue entries answered with an error, by error kind.",
            ["stream", "kind"],
            registry=r,
        )
        self.retried = Counter(
            "modelyard_queue_retried_total",
            "Queue entries left pending after a transient failure (to be retried).",
            ["stream"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "modelyard_queue_dead_lettered_total",
            "Queue entries moved to the dead-letter stream after too many failed deliveries.",
            ["stream"],
            registry=r,
        )
        self.duplicates = Counter(
            "modelyard_queue_duplicates_total",
            "Results not written because the uri already had one (redelivered entries).",
            ["stream"],
            registry=r,
        )
        self.reclaimed = Counter(
            "modelyard_queue_reclaimed_total",
            "Entries claimed from other consumers after they idled too long (XAUTOCLAIM).",
            ["stream"],
            registry=r,
        )
        self.batch_size = Histogram(
            "modelyard_queue_batch_size",
            "Entries per batch read from the stream.",
            ["stream"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "modelyard_queue_batch_seconds",
            "Time to decode, infer, write and acknowledge one batch.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "modelyard_queue_latency_seconds",
            "Time from enqueue (the entry's t field) to its result being written.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.length = Gauge(
            "modelyard_queue_stream_length",
            "Entries in the input stream (unprocessed plus in flight).",
            ["stream"],
            registry=r,
        )
        self.pending = Gauge(
            "modelyard_queue_pending",
            "Entries delivered to a consumer of the group and not yet acknowledged.",
            ["stream", "group"],
            registry=r,
        )
        self.lag = Gauge(
            "modelyard_queue_lag",
            "Entries not yet delivered to the group (Redis's consumer-group lag).",
            ["stream", "group"],
            registry=r,
        )
        self.dead_length = Gauge(
            "modelyard_queue_dead_letter_length",
            "Entries in the dead-letter stream.",
            ["stream"],
            registry=r,
        )
