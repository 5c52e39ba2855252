"""A queue worker process: an inference runtime following the control plane, plus the stream worker.

:func:`run_worker` is what ``modelyard queue-worker`` runs. The runtime is the
same :class:`~modelyard.serving.runtime.InferenceRuntime` an HTTP replica uses,
so a new model version or new preprocess code is picked up without a restart.

``--metrics-port`` serves one registry: the runtime's (the same per-endpoint request
counts, latencies, batch sizes and endpoint states an HTTP replica's ``/metrics`` shows,
for the inputs this worker ran) plus the queue's own :class:`WorkerMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis.asyncio as aioredis
from prometheus_client import start_http_server
from redis.utils import HIREDIS_AVAILABLE

from modelyard.queue.metrics import WorkerMetrics
from modelyard.queue.worker import QueueWorker, WorkerConfig
from modelyard.serving.runtime import InferenceRuntime
from modelyard.settings import Settings

log = logging.getLogger("modelyard.queue")


async def wait_ready(runtime: InferenceRuntime, timeout: float | None = None) -> None:
    """Until a configuration is applied and its endpoints have finished loading."""
    await asyncio.wait_for(runtime.sync.synced.wait(), timeout)
    await runtime.table.wait_loaded(timeout)


async def run_worker(
    settings: Settings,
    config: WorkerConfig,
    *,
    metrics_port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Follow ``settings.service`` on the control plane and consume ``config.stream`` until stopped.

    SIGTERM and SIGINT stop it gracefully: no new reads, the batches in hand are finished
    and acknowledged. With ``metrics_port``, ``/metrics`` is served from the start (before
    the control plane answers), so a scrape shows a worker that is up but not consuming.
    """
    if not HIREDIS_AVAILABLE:
        log.warning(
            "hiredis is not installed: Redis replies are parsed in Python, which roughly halves "
            "the worker's throughput; pip install 'redis[hiredis]'"
        )
    runtime = InferenceRuntime(settings)
    metrics = WorkerMetrics(runtime.metrics.registry)
    server = None
    if metrics_port is not None:
        server, _ = start_http_server(metrics_port, registry=runtime.metrics.registry)
    client = aioredis.Redis.from_url(settings.redis_url)
    worker = QueueWorker(client, runtime.dataplane.infer_many, config, metrics)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    try:
        log.info("waiting for service %s from %s", settings.service, settings.resolved_control_plane_url())
        ready = asyncio.ensure_future(wait_ready(runtime))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            return
        stopped.cancel()
        log.info(
            "consuming %s as group %s (%d consumers, endpoint %s)",
            config.stream, config.group, config.consumers, config.endpoint or "per entry",
        )  # fmt: skip
        task = asyncio.ensure_future(worker.run())
        stopped = asyncio.ensure_future(stop.wait())
        # run() survives Redis going away; should it fail anyway, the process exits with the
        # error (for its supervisor to restart it) rather than live on consuming nothing
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        worker.stop()
        await task
    finally:
        await runtime.stop()
        await client.aclose()
        if server is not None:
            server.shutdown()
            server.server_close()
