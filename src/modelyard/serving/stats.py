"""Live request statistics for the dashboard, pushed by each replica process to the control plane.

The control plane must not need Prometheus to draw its live charts, and it cannot know every
replica's address, so each replica process sends, every ``interval_s`` while traffic flows
(every 10 s when idle), its cumulative per-endpoint request counts by status code and its
request latency histogram, read from its own :class:`~modelyard.metrics.Metrics`. Each uvicorn
worker reports as its own replica (its own counters, its own id), so the control plane's sum
over replicas is the sum over workers. The control plane keeps the last two reports of each
replica and turns them into rates and quantiles (:mod:`modelyard.control.monitoring`).

The document is bounded: it names only endpoint keys the service has now (``known``: the data
plane's :meth:`~modelyard.serving.dataplane.DataPlane.label_keys`, which include the fixed
``_unknown`` entry counting requests for anything else), and past ``max_bytes`` of JSON the
busiest entries are kept and the rest left out (logged), so neither random request paths nor a
service with thousands of versions can make a replica push megabytes every interval. The control
plane refuses a larger document (413), whoever sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Container
from typing import Any

import httpx
import orjson

from modelyard.config import endpoint_key
from modelyard.metrics import Metrics
from modelyard.settings import Settings

log = logging.getLogger("modelyard.stats")

IDLE_REPORT_S = 10.0
WARN_EVERY_S = 60.0
DEFAULT_MAX_BYTES: int = Settings.model_fields["stats_max_bytes"].default
_TIME_RESERVE = 40
"""Bytes kept for the document's ``time`` field when trimming (a float is at most ~25)."""


def endpoint_stats(metrics: Metrics, known: Container[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{"iris/1": {"codes": {"200": n}, "count": n, "sum": s, "buckets": [[le, cumulative]...]}}``.

    ``known``: the endpoint keys to report (others, such as versions removed since, are left out).
    """
    out: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        if not labels.get("endpoint"):
            return None  # no endpoint label (never written since requests are labelled by name)
        key = endpoint_key(labels["endpoint"], labels.get("version", ""))
        if known is not None and key not in known:
            return None
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


def encode_report(when: float, endpoints: dict[str, dict[str, Any]]) -> bytes:
    """The JSON body of a statistics push (the exact bytes the size limit counts)."""
    return orjson.dumps({"time": when, "endpoints": endpoints})


def bounded(endpoints: dict[str, dict[str, Any]], max_bytes: int) -> tuple[dict[str, dict[str, Any]], int]:
    """The entries whose report fits in ``max_bytes`` of JSON, busiest first; and how many did not."""
    if len(encode_report(0.0, endpoints)) + _TIME_RESERVE <= max_bytes:
        return endpoints, 0
    budget = max_bytes - len(encode_report(0.0, {})) - _TIME_RESERVE
    kept: dict[str, dict[str, Any]] = {}
    busiest = sorted(endpoints.items(), key=lambda item: (-sum(item[1]["codes"].values()), item[0]))
    for key, entry in busiest:
        size = len(orjson.dumps({key: entry}))  # '{' and '}' pay for the ',' between entries
        if size <= budget:
            kept[key] = entry
            budget -= size
    return kept, len(endpoints) - len(kept)


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
        known: Callable[[], Container[str]] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """``known``: the endpoint keys the service has now (None: every labelled key);
        ``max_bytes``: the largest document sent (``Settings.stats_max_bytes``)."""
        self.http = http
        self.service = service
        self.replica = replica
        self.metrics = metrics
        self.interval_s = interval_s
        self.known = known
        self.max_bytes = max_bytes
        self._task: asyncio.Task[None] | None = None
        self._warned = -WARN_EVERY_S

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def collect(self) -> dict[str, dict[str, Any]]:
        """This process's statistics as they will be sent: known keys only, within ``max_bytes``."""
        endpoints = endpoint_stats(self.metrics, self.known() if self.known is not None else None)
        endpoints, left_out = bounded(endpoints, self.max_bytes)
        if left_out:
            self._warn(
                "statistics of %d endpoint versions left out of the push to stay within %d bytes "
                "(MODELYARD_STATS_MAX_BYTES); the busiest are sent",
                left_out,
                self.max_bytes,
            )
        return endpoints

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(message, *args)

    async def report_once(self, endpoints: dict[str, dict[str, Any]]) -> bool:
        response = await self.http.put(
            f"/api/services/{self.service}/replicas/{self.replica}/stats",
            content=encode_report(time.time(), endpoints),
            headers={"content-type": "application/json"},
            timeout=5,
        )
        if response.status_code == 413:
            self._warn("the control plane refused a statistics push as too large: %s", response.text[:300])
        return response.status_code == 204

    async def _run(self) -> None:
        last: dict[str, dict[str, Any]] | None = None
        last_sent = 0.0
        moved = True  # one report after traffic stops, so the control plane sees a zero rate
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                endpoints = self.collect()
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
