"""Live request statistics for the dashboard, pushed by each replica process to the control plane.

The control plane must not need Prometheus to draw its live charts, and it cannot know every
replica's address, so each replica process sends, every ``interval_s`` while traffic flows
(every 10 s when idle), its cumulative per-endpoint request counts by status code and its
request latency histogram, read from its own :class:`~modelyard.metrics.Metrics`. Each uvicorn
worker reports as its own replica (its own counters, its own id), so the control plane's sum
over replicas is the sum over workers. The control plane keeps the last two reports of each
replica and turns them into rates and quantiles (:mod:`modelyard.control.monitoring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from modelyard.config import endpoint_key
from modelyard.metrics import Metrics

log = logging.getLogger("modelyard.stats")

IDLE_REPORT_S = 10.0


def endpoint_stats(metrics: Metrics) -> dict[str, dict[str, Any]]:
    """``{"iris/1": {"codes": {"200": n}, "count": n, "sum": s, "buckets": [[le, cumulative]...]}}``."""
    out: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        if not labels.get("endpoint"):
            return None  # requests that matched no endpoint
        key = endpoint_key(labels["endpoint"], labels.get("version", ""))
        return out.setdefault(key, {"codes": {}, "count": 0, "sum": 0.0, "buckets": []})

    for sample in metrics.own_samples("modelyard_requests"):
        if sample.name.endswith("_total"):
            item = entry(sample.labels)
            if item is not None and sample.value:
                item["codes"][sample.labels["code"]] = int(sample.value)
    for sample in metrics.own_samples("modelyard_request_duration_seconds"):
        item = entry(sample.labels)
        if item is None:
            continue
        if sample.name.endswith("_bucket"):
            item["buckets"].append([sample.labels["le"], int(sample.value)])
        elif sample.name.endswith("_count"):
            item["count"] = int(sample.value)
        elif sample.name.endswith("_sum"):
            item["sum"] = float(sample.value)
    return {k: v for k, v in out.items() if v["count"] or v["codes"]}


class StatsReporter:
    """The background task that sends :func:`endpoint_stats` to the control plane."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        service: str,
        replica: str,
        metrics: Metrics,
        interval_s: float = 2.0,
    ) -> None:
        self.http = http
        self.service = service
        self.replica = replica
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def report_once(self, endpoints: dict[str, dict[str, Any]]) -> bool:
        response = await self.http.put(
            f"/api/services/{self.service}/replicas/{self.replica}/stats",
            json={"time": time.time(), "endpoints": endpoints},
            timeout=5,
        )
        return response.status_code == 204

    async def _run(self) -> None:
        last: dict[str, dict[str, Any]] | None = None
        last_sent = 0.0
        moved = True  # one report after traffic stops, so the control plane sees a zero rate
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                endpoints = endpoint_stats(self.metrics)
                now = time.monotonic()
                changed = endpoints != last
                if not changed and not moved and now - last_sent < IDLE_REPORT_S:
                    continue
                if await self.report_once(endpoints):
                    last, last_sent, moved = endpoints, now, changed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("stats report failed: %s", exc)
