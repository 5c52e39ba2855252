"""Composition of one inference replica: HTTP client, artifact cache, data plane, sync loop,
and the gRPC front when ``Settings.grpc_port`` is set (the HTTP front is the app that hosts it).

Built once per worker process by the composition root and passed to the HTTP
app; nothing here is global, so tests build as many replicas as they like.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from modelyard.config import split_endpoint_key
from modelyard.engines.registry import EngineRegistry, default_engine_registry
from modelyard.metrics import Metrics
from modelyard.preprocess_archive import ArchiveLimits
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.fetch import ArtifactCache
from modelyard.serving.stats import StatsReporter
from modelyard.serving.sync import ConfigSync
from modelyard.serving.table import EndpointTable
from modelyard.settings import Settings

if TYPE_CHECKING:
    from modelyard.serving.oip_grpc import OipGrpcServer

log = logging.getLogger("modelyard.serving")


def read_token(settings: Settings) -> str | None:
    """The token a replica or client presents: the setting, else the home folder's token file."""
    if settings.token:
        return settings.token
    try:
        return settings.token_file().read_text().strip() or None
    except OSError:
        return None


class InferenceRuntime:
    """Everything one replica process runs besides the HTTP front."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: EngineRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        grpc_port: int | None = None,
    ) -> None:
        """``grpc_port``: also serve the OIP over gRPC there; the composition root passes
        ``Settings.grpc_port`` for ``serve`` and ``inference`` (a queue worker has no front)."""
        self.settings = settings
        self.grpc_port = grpc_port
        self.metrics = metrics if metrics is not None else Metrics(service=settings.service)
        token = read_token(settings)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        base_url = "http://control-plane" if transport is not None else settings.resolved_control_plane_url()
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport, timeout=30)
        cache_dir = Path(settings.resolved_cache_dir())
        threads = min(32, (os.cpu_count() or 1) + 4)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="modelyard-infer")
        self.nested_executor = ThreadPoolExecutor(threads, thread_name_prefix="modelyard-nested")
        self.load_executor = ThreadPoolExecutor(4, thread_name_prefix="modelyard-load")
        self.dataplane = DataPlane(
            registry=registry or default_engine_registry(),
            cache=ArtifactCache(cache_dir, self.http, ArchiveLimits.from_settings(settings)),
            executor=self.executor,
            nested_executor=self.nested_executor,
            load_executor=self.load_executor,
            metrics=self.metrics,
            inline_max_s=settings.inline_max_ms / 1000.0,
            request_timeout_s=settings.request_timeout_s,
            retire_wait_s=settings.retire_wait_s,
            max_inflight=settings.max_inflight,
        )
        self.dataplane.batch_observer = self.metrics.batch_observer()
        self.sync = ConfigSync(
            service=settings.service,
            http=self.http,
            table=self.dataplane.table,
            cache_dir=cache_dir,
            wait_s=settings.sync_wait_s,
            retry_s=settings.sync_retry_s,
            endpoints=settings.endpoints,
        )
        self.sync.after_save = self._prune_cache_soon
        self._pruning: asyncio.Future[object] | None = None
        report_change = self.dataplane.table.on_change

        def on_change() -> None:
            report_change()
            self._publish_states()

        self.dataplane.table.on_change = on_change
        self.stats = StatsReporter(
            http=self.http,
            service=settings.service,
            replica=self.sync.replica,
            metrics=self.metrics,
            interval_s=settings.stats_interval_s,
            known=self.dataplane.label_keys,
            max_bytes=settings.stats_max_bytes,
        )
        self.grpc: OipGrpcServer | None = None

    def _prune_cache_soon(self) -> None:
        """Drop cached artifacts no configuration needs (in a thread; one pass at a time)."""
        if self._pruning is not None and not self._pruning.done():
            return
        loop = asyncio.get_running_loop()
        self._pruning = loop.run_in_executor(
            self.load_executor, self.dataplane.cache.prune_unreferenced, self.settings.cache_keep_s
        )

    def _publish_states(self) -> None:
        table = self.dataplane.table
        states = [(*split_endpoint_key(key), status.state) for key, status in table.status.items()]
        try:
            self.metrics.set_states(table.revision, states)
        except Exception:
            log.exception("updating endpoint state metrics failed")

    @property
    def table(self) -> EndpointTable:
        return self.dataplane.table

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.dataplane.loop = loop
        self.sync.start()
        if self.settings.stats_interval_s > 0:
            self.stats.start()
        for name in self.settings.preload_engines:
            loop.run_in_executor(self.load_executor, self._preload, name)
        wait_s = self.settings.resolved_ready_wait_s()
        if wait_s > 0:
            await self.wait_ready(wait_s)
        if self.grpc_port is not None:
            await self._start_grpc(self.grpc_port)

    async def _start_grpc(self, port: int) -> None:
        """The OIP gRPC front on ``port``, on this loop (after the ready wait, as uvicorn
        accepts HTTP connections only once startup is done)."""
        try:
            from modelyard.serving.oip_grpc import OipGrpcServer
        except ImportError as exc:
            raise RuntimeError(
                f"grpc_port is set but the gRPC front cannot be imported ({exc}): "
                "pip install 'modelyard[grpc]'"
            ) from None
        server = OipGrpcServer(self, port)
        await server.start()
        self.grpc = server

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until the configuration is applied and every load finished.

        Called at start when ``Settings.resolved_ready_wait_s()`` is positive: uvicorn accepts
        connections only after startup, so a worker joining others (autoscaling, a restart)
        never answers 503 loading.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.ready():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("not ready after %g s (control plane down?); serving anyway", timeout_s)
                return False
            await asyncio.sleep(0.02)
        return True

    def _preload(self, name: str) -> None:
        try:
            self.dataplane.registry.warm(name)
        except Exception as exc:  # a missing optional package only matters when used
            log.debug("preloading engine %s failed: %s", name, exc)

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()  # in-flight RPCs finish first (a few seconds' grace)
            self.grpc = None
        await self.sync.stop()
        await self.stats.stop()
        await self.dataplane.table.close()
        self.metrics.close()
        await self.http.aclose()
        for pool in (self.executor, self.nested_executor, self.load_executor):
            pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        return self.sync.synced.is_set() and not self.dataplane.table.loading()
