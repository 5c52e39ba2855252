"""Prometheus metrics of an inference replica, on a registry owned by a :class:`Metrics` object.

No global registry: the composition root builds one :class:`Metrics` per process and hands
it to the runtime and data plane; tests build as many as they like.

Several uvicorn workers: the composition root sets ``PROMETHEUS_MULTIPROC_DIR`` to a folder it
empties at start (before the workers are spawned, so their prometheus_client picks the mmap
value class) and passes the same folder here. A scrape, answered by any worker, then reads
every worker's files (:class:`~prometheus_client.multiprocess.MultiProcessCollector`): counters
and histograms are summed over workers (dead ones included, so nothing goes backwards), gauges
use the ``live*`` modes and a worker's live gauges are dropped when it exits (``mark_process_dead``
on shutdown, and at scrape time for workers that died without saying so). Process CPU/memory
is reported per live worker with a ``pid`` label.

Besides the per-endpoint series: shadow traffic of canaries (:class:`ShadowMetrics`, the canary
router's observer), and per-GPU series when NVML starts (:mod:`modelyard.metrics_gpu`).

Hot path: :meth:`Metrics.endpoint` returns an :class:`EndpointInstruments` with every labelled
child resolved once per endpoint version. Its counters, gauge and histograms are buffered in the
process (:mod:`modelyard.metrics_buffers`: a bisect and an add under one uncontended lock) and
moved into the Prometheus values on :meth:`Metrics.flush`: before every collection of this
process's registry, and every :data:`FLUSH_INTERVAL_S` by a thread when several workers share
the multiprocess folder (whose mmap-backed values cost ~3 µs per write: ~30 µs a request
unbuffered, measured by ``bench/metrics_overhead.py``). A scrape answered by one worker thus sees
the others' requests up to that interval late; its own, and every single-process scrape, exactly.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from modelyard.metrics_buffers import Spread, Tally
from modelyard.metrics_custom import CustomStatistics
from modelyard.metrics_gpu import GpuProbe, GpuStatusCollector, probe_gpus
from modelyard.metrics_multiprocess import WorkerProcessCollector, prune_dead_workers

log = logging.getLogger("modelyard.metrics")

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STATES = ("loading", "updating", "ready", "failed")
STAGES = ("preprocess", "queue", "process", "postprocess")
ENDPOINT_LABELS = ("service", "endpoint", "version")

FLUSH_INTERVAL_S = 0.5
"""How often a worker of several moves its buffered request metrics into the shared files."""


class EndpointInstruments:
    """Every metric child of one endpoint version, resolved once (not per request)."""

    __slots__ = (
        "_code_children",
        "_lock",
        "_requests",
        "batch_size",
        "custom",
        "duration",
        "endpoint",
        "generation",
        "inflight",
        "labels",
        "ok",
        "postprocess",
        "preprocess",
        "process",
        "queue",
        "version",
    )

    def __init__(self, metrics: Metrics, endpoint: str, version: str) -> None:
        labels = (metrics.service, endpoint, version)
        self.labels = labels
        self.endpoint = endpoint
        self.version = version
        self._lock = threading.Lock()
        lock = self._lock
        self._requests = metrics.requests
        self.ok = Tally(metrics.requests.labels(*labels, "200"), lock)
        self._code_children: dict[int, Tally] = {200: self.ok}
        self.duration = Spread(metrics.request_duration.labels(*labels), lock)
        stage = metrics.stage_duration
        self.preprocess = Spread(stage.labels(*labels, "preprocess"), lock)
        self.queue = Spread(stage.labels(*labels, "queue"), lock)
        self.process = Spread(stage.labels(*labels, "process"), lock)
        self.postprocess = Spread(stage.labels(*labels, "postprocess"), lock)
        self.inflight = Tally(metrics.inflight.labels(*labels), lock)
        self.batch_size = Spread(metrics.batch_size.labels(*labels), lock)
        self.custom: Any = None
        """The endpoint's :class:`~modelyard.metrics_custom.CustomRecorder`, or None."""
        self.generation = -1
        """The custom-rule generation :attr:`custom` was bound for (set by the data plane)."""

    def count(self, code: int) -> None:
        """One finished request with status ``code``."""
        child = self._code_children.get(code)
        if child is None:
            child = Tally(self._requests.labels(*self.labels, str(code)), self._lock)
            self._code_children[code] = child
        child.inc()

    def flush(self) -> None:
        """Move the buffered values into the Prometheus children (see the module doc)."""
        buffers: list[Tally | Spread] = [
            *list(self._code_children.values()),
            self.inflight,
            self.duration,
            self.preprocess,
            self.queue,
            self.process,
            self.postprocess,
            self.batch_size,
        ]
        for buffer in buffers:
            buffer.flush()

    def stages(self, queue: float | None, pre: float | None, process: float, post: float | None) -> None:
        """Per-stage seconds of one request; ``None`` for a stage this endpoint does not have."""
        if queue is not None:
            self.queue.observe(queue)
        if pre is not None:
            self.preprocess.observe(pre)
        self.process.observe(process)
        if post is not None:
            self.postprocess.observe(post)


class BatchMetrics:
    """Queue wait of every request in a dynamic batch, as the ``queue`` stage.

    The batch size itself is observed where batches run (``LoadedEndpoint.run_many``), which
    also covers queue-worker batches; refusals are counted as 503 by the data plane.
    """

    def __init__(self, endpoints: dict[str, EndpointInstruments]) -> None:
        self._endpoints = endpoints

    def batch(self, key: str, size: int, queue_wait_s: Iterable[float]) -> None:
        inst = self._endpoints.get(key)
        if inst is not None:
            observe = inst.queue.observe
            for wait in queue_wait_s:
                observe(wait)

    def overloaded(self, key: str) -> None:
        pass


class ShadowMetrics:
    """Shadow traffic of canaries: answers by status code, their latency, and dropped copies.

    The shadow target's own ``modelyard_requests_total`` and custom statistics (a metric rule
    on the target, e.g. ``iris/*``) record its answers too; these series tell them apart from
    client traffic and show what was dropped to protect the primary.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._done: dict[tuple[str, str, int], Any] = {}
        self._duration: dict[tuple[str, str], Any] = {}
        self._dropped: dict[tuple[str, str], Any] = {}

    def shadow_done(self, canary: str, target: str, status: int, seconds: float) -> None:
        m = self._metrics
        child = self._done.get((canary, target, status))
        if child is None:
            child = self._done[(canary, target, status)] = m.shadow_requests.labels(
                m.service, canary, target, str(status)
            )
        child.inc()
        timer = self._duration.get((canary, target))
        if timer is None:
            timer = self._duration[(canary, target)] = m.shadow_duration.labels(m.service, canary, target)
        timer.observe(seconds)

    def shadow_dropped(self, canary: str, target: str) -> None:
        child = self._dropped.get((canary, target))
        if child is None:
            m = self._metrics
            child = self._dropped[(canary, target)] = m.shadow_dropped.labels(m.service, canary, target)
        child.inc()


class Metrics:
    """The standard metrics of one process, plus custom statistics. See the module docstring."""

    def __init__(
        self,
        *,
        service: str = "default",
        multiprocess_dir: str | Path | None = None,
        gpu: bool = True,
    ) -> None:
        self.service = service
        self.multiprocess_dir = str(multiprocess_dir) if multiprocess_dir else None
        self.registry = CollectorRegistry()
        r = self.registry
        self._endpoints: dict[str, EndpointInstruments] = {}
        r.register(_FlushFirst(self))  # registered first: collected (flushed) before the rest
        names = list(ENDPOINT_LABELS)
        self.requests = Counter(
            "modelyard_requests",
            "Requests answered, by endpoint version and HTTP status code.",
            [*names, "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "modelyard_request_duration_seconds",
            "Time from routing a request to its answer (all stages).",
            names,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "modelyard_stage_duration_seconds",
            "Time spent per stage: preprocess, queue (waiting for a worker or batch), process, postprocess.",
            [*names, "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "modelyard_inflight_requests",
            "Requests being processed now.",
            names,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "modelyard_batch_size",
            "Requests per engine batch (dynamic batching, queue batches).",
            names,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "modelyard_model_load_seconds",
            "Time to load an endpoint version (fetch artifacts, import code, load the model).",
            [*names, "engine"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "modelyard_model_load_failures",
            "Endpoint version loads that failed.",
            [*names, "engine"],
            registry=r,
        )
        self.endpoint_state = Gauge(
            "modelyard_endpoint_state",
            "1 for the state each endpoint version is in (summed over worker processes).",
            [*names, "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.config_revision = Gauge(
            "modelyard_config_revision",
            "Configuration revision applied (the lowest over live worker processes).",
            ["service"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.custom_errors = Counter(
            "modelyard_custom_statistics_errors",
            "Custom statistics values dropped because recording them failed.",
            ["service"],
            registry=r,
        )
        self.custom = CustomStatistics(r, service, self.custom_errors.labels(service))
        self.shadow_requests = Counter(
            "modelyard_shadow_requests",
            "Shadow copies of canary requests answered, by canary, shadow target and the shadow's "
            "status code (never returned to the client).",
            ["service", "canary", "target", "code"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "modelyard_shadow_duration_seconds",
            "Time from mirroring a request to the shadow target's answer (waiting for a shadow "
            "thread included).",
            ["service", "canary", "target"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.shadow_dropped = Counter(
            "modelyard_shadow_dropped",
            "Shadow copies not sent: too many shadows running, or the target not serving here.",
            ["service", "canary", "target"],
            registry=r,
        )
        self._unrouted: dict[tuple[str, str, int], Any] = {}
        self._states: dict[str, tuple[str, str, str]] = {}
        self.gpu: GpuProbe = probe_gpus(gpu)
        """Whether per-GPU series are exported, and why not (``modelyard_gpu_metrics_enabled``)."""
        self._gpu_status = GpuStatusCollector(self.gpu)
        if self.multiprocess_dir is None:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
            r.register(self._gpu_status)
            if self.gpu.collector is not None:
                r.register(self.gpu.collector)

        self._stop_flushing = threading.Event()
        if self.multiprocess_dir is not None:
            threading.Thread(target=self._flush_every, name="modelyard-metrics-flush", daemon=True).start()

    def flush(self) -> None:
        """Move every endpoint's buffered request metrics into the Prometheus values."""
        for inst in list(self._endpoints.values()):
            try:
                inst.flush()
            except Exception:  # never let a metrics hiccup reach a request or a scrape
                log.exception("flushing the metrics of %s/%s failed", inst.endpoint, inst.version)

    def _flush_every(self) -> None:
        while not self._stop_flushing.wait(FLUSH_INTERVAL_S):
            self.flush()
        self.flush()

    # -- per endpoint -----------------------------------------------------------------------------
    def endpoint(self, endpoint: str, version: str) -> EndpointInstruments:
        """The instruments of one endpoint version (one object per version, reused)."""
        key = f"{endpoint}/{version}" if version else endpoint
        inst = self._endpoints.get(key)
        if inst is None:
            inst = self._endpoints[key] = EndpointInstruments(self, endpoint, version)
        return inst

    def batch_observer(self) -> BatchMetrics:
        """The dynamic batcher's observer (:class:`modelyard.serving.batching.BatchObserver`)."""
        return BatchMetrics(self._endpoints)

    def shadow_observer(self) -> ShadowMetrics:
        """The canary router's observer (:class:`modelyard.serving.routing.ShadowObserver`)."""
        return ShadowMetrics(self)

    def count_unrouted(self, endpoint: str, version: str, code: int) -> None:
        """A request that never reached an endpoint version (unknown, loading, bad body)."""
        key = (endpoint, version, code)
        child = self._unrouted.get(key)
        if child is None:
            child = self._unrouted[key] = self.requests.labels(self.service, endpoint, version, str(code))
        child.inc()

    def loaded(self, endpoint: str, version: str, engine: str, seconds: float) -> None:
        self.load_seconds.labels(self.service, endpoint, version, engine).observe(seconds)

    def load_failed(self, endpoint: str, version: str, engine: str) -> None:
        self.load_failures.labels(self.service, endpoint, version, engine).inc()

    def set_states(self, revision: int, states: Iterable[tuple[str, str, str]]) -> None:
        """Endpoint versions ``(endpoint, version, state)`` now; versions no longer listed go to 0."""
        self.config_revision.labels(self.service).set(revision)
        current = {f"{e}/{v}": (e, v, s) for e, v, s in states}
        for key, (endpoint, version, state) in list(self._states.items()):
            now = current.get(key)
            if now is None or now[2] != state:
                self.endpoint_state.labels(self.service, endpoint, version, state).set(0)
                if now is None:
                    del self._states[key]
        for key, (endpoint, version, state) in current.items():
            self.endpoint_state.labels(self.service, endpoint, version, state).set(1)
            self._states[key] = (endpoint, version, state)

    # -- exposition -------------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (body, content type) of this process or all workers."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        self.flush()
        prune_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(WorkerProcessCollector(self.multiprocess_dir))
        registry.register(self._gpu_status)
        if self.gpu.collector is not None:
            registry.register(self.gpu.collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def own_samples(self, name: str) -> Iterator[Any]:
        """This process's samples of metric family ``name`` (for status reports, not scrapes)."""
        for family in self.registry.collect():
            if family.name == name:
                yield from family.samples

    def close(self) -> None:
        """A worker leaving: flush, then drop its live gauges from the shared folder."""
        self._stop_flushing.set()
        self.flush()
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            try:
                mark_process_dead(os.getpid(), self.multiprocess_dir)
            except OSError as exc:
                log.debug("mark_process_dead failed: %s", exc)


class _FlushFirst(Collector):
    """Yields nothing; collecting it flushes the request buffers, so every reader of this
    process's registry (``/metrics``, status reports, a queue worker's metrics port) sees them."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return []
