"""What the rendered KEDA triggers measure, on the real Redis (7+) with the real worker core.

KEDA's redis-streams scaler (``pkg/scalers/redis_streams_scaler.go``) reads, per trigger:
with ``lagCount``, the consumer group's ``lag`` from ``XINFO GROUPS`` (``XLEN`` while the group
does not exist yet); with ``pendingEntriesCount``, ``XPENDING``'s count. A trigger is active
when that value is above ``activationLagCount`` (default 0), and asks for
``ceil(value / target)`` replicas. :func:`keda_reads` does the same reads, so these tests show
on Redis itself, with the worker's ack-and-delete pattern, that the rendered ScaledObject wakes
workers from zero on a backlog, keeps one for entries a stopped worker left pending, and lets
them go when all is done.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from modelyard.deploy import k8s
from modelyard.deploy.spec import parse_text
from modelyard.queue import InputQueue
from modelyard.queue.metrics import WorkerMetrics
from modelyard.queue.worker import QueueWorker, WorkerConfig
from tests.deploy.k8s_checks import by_kind, containers, flags

pytestmark = pytest.mark.redis

SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {{name: sums, service: batch}}
spec:
  framework: sklearn
  queue: {{stream: {stream}, consumerGroup: summers, lagCount: 5, batchSize: 8, maxReplicas: 4}}
  predictors:
    - name: a
      model: {{name: sums, project: demo}}
"""


@pytest.fixture
def rendered(rclient: redis.Redis) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """The ScaledObject and the worker's args for a spec on a fresh stream (deleted after)."""
    version = str(rclient.info()["redis_version"])
    assert int(version.split(".")[0]) >= 7, f"KEDA reads the consumer group lag: Redis 7+, found {version}"
    stream = f"test-keda-{uuid.uuid4().hex[:12]}"
    docs = k8s.render(parse_text(SPEC.format(stream=stream)), platform=False)
    (scaled,) = by_kind(docs, "ScaledObject")
    worker = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == scaled["metadata"]["name"]
    )
    yield scaled, containers(worker)[0]["args"]
    keys = list(rclient.scan_iter(match=f"{stream}*", count=1000))
    if keys:
        rclient.delete(*keys)


def keda_reads(r: redis.Redis, scaled: dict[str, Any]) -> dict[str, tuple[int, bool, int] | str]:
    """Per trigger name: (value, active, replicas asked for) as KEDA's scaler computes them, or
    the error KEDA would log for that trigger."""
    out: dict[str, tuple[int, bool, int] | str] = {}
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        stream, group = meta["stream"], meta["consumerGroup"]
        try:
            if "lagCount" in meta:
                target = int(meta["lagCount"])
                if not r.exists(stream):
                    value = 0
                else:
                    lags = [g["lag"] for g in r.xinfo_groups(stream) if g["name"].decode() == group]
                    value = int(lags[0] or 0) if lags else int(r.xlen(stream))
            else:
                target = int(meta["pendingEntriesCount"])
                value = int(r.xpending(stream, group)["pending"])
        except redis.ResponseError as exc:
            out[trigger["name"]] = str(exc).split()[0]
            continue
        active = value > int(meta.get("activationLagCount", "0"))
        out[trigger["name"]] = (value, active, math.ceil(value / target))
    return out


def worker_for(args: list[str], name: str) -> tuple[WorkerConfig, Any]:
    """The WorkerConfig the rendered args give ``modelyard queue-worker``, and a stand-in model."""
    given = flags(args[1:])
    config = WorkerConfig(
        stream=given["--stream"],
        group=given["--group"],
        batch_size=int(given["--batch-size"]),
        consumer=name,
        endpoint=given["--endpoint"],
        claim_idle_ms=50,
    )

    async def infer_many(endpoint: str, version: str | None, bodies: list[Any]) -> tuple[str, list[Any]]:
        return f"{endpoint}/{version}", [{"y": np.asarray(b["x"]).sum()} for b in bodies]

    return config, infer_many


def work(redis_url: str, args: list[str], name: str, steps: int) -> int:
    """Run a worker core for up to ``steps`` steps (stop early once idle); entries handled."""
    config, infer_many = worker_for(args, name)

    async def main() -> int:
        client = aioredis.Redis.from_url(redis_url)
        worker = QueueWorker(client, infer_many, config, WorkerMetrics(CollectorRegistry()))
        await worker.ensure_group()
        handled = idle = 0
        try:
            for _ in range(steps):
                n = await worker.step(config.consumer_name(0), block_ms=20)
                handled += n
                idle = idle + 1 if n == 0 else 0
                if idle >= 3:
                    break
                await asyncio.sleep(0.06 if n == 0 else 0)  # let claim_idle_ms pass for XAUTOCLAIM
        finally:
            await client.aclose()
        return handled

    return asyncio.run(main())


def enqueue(redis_url: str, stream: str, n: int, start: int = 0) -> None:
    q = InputQueue(redis_url, stream, endpoint="sums")
    try:
        q.enqueue_batch([(f"in-{i}", {"x": np.array([float(i)])}) for i in range(start, start + n)])
    finally:
        q.close()


def test_the_lag_trigger_wakes_workers_from_zero_where_pending_entries_never_would(
    rclient: redis.Redis, redis_url: str, rendered: tuple[dict[str, Any], list[str]]
) -> None:
    scaled, args = rendered
    stream = scaled["spec"]["triggers"][0]["metadata"]["stream"]
    assert scaled["spec"]["minReplicaCount"] == 0

    # Entries before any worker ever ran (no consumer group yet): the lag trigger falls back
    # to XLEN and wakes workers; the pending one can only fail (no group to ask).
    enqueue(redis_url, stream, 12)
    reads = keda_reads(rclient, scaled)
    assert reads == {"backlog": (12, True, 3), "in-flight": "NOGROUP"}, reads
    assert work(redis_url, args, "w1", 20) == 12
    reads = keda_reads(rclient, scaled)
    assert reads == {"backlog": (0, False, 0), "in-flight": (0, False, 0)}, reads  # may go to zero

    # Scaled to zero, new input arrives: only the lag sees it (pending stays 0: nobody read it).
    enqueue(redis_url, stream, 7, start=100)
    reads = keda_reads(rclient, scaled)
    assert reads == {"backlog": (7, True, 2), "in-flight": (0, False, 0)}, reads

    # A worker takes the batch and is stopped before acknowledging it: lag 0, but the
    # in-flight trigger keeps one worker up, which reclaims the entries and finishes them.
    rclient.xreadgroup("summers", "killed-0", {stream: ">"}, count=8)
    reads = keda_reads(rclient, scaled)
    assert reads == {"backlog": (0, False, 0), "in-flight": (7, True, 1)}, reads
    assert work(redis_url, args, "w2", 40) == 7
    assert keda_reads(rclient, scaled) == {"backlog": (0, False, 0), "in-flight": (0, False, 0)}
    assert rclient.xlen(stream) == 0, "acknowledged entries are deleted"


def test_the_lag_counts_the_backlog_while_workers_run(
    rclient: redis.Redis, redis_url: str, rendered: tuple[dict[str, Any], list[str]]
) -> None:
    """With workers up, the backlog (not what they hold) asks for more of them."""
    scaled, args = rendered
    stream = scaled["spec"]["triggers"][0]["metadata"]["stream"]
    enqueue(redis_url, stream, 3)
    assert work(redis_url, args, "w1", 20) == 3  # the group exists, workers have run
    enqueue(redis_url, stream, 40, start=10)
    rclient.xreadgroup("summers", "busy-0", {stream: ">"}, count=8)  # one worker holds a batch
    reads = keda_reads(rclient, scaled)
    assert reads == {"backlog": (32, True, 7), "in-flight": (8, True, 1)}, reads
    # KEDA takes the larger ask (capped at maxReplicaCount 4): the backlog decides.
    assert min(max(r for _, _, r in reads.values()), scaled["spec"]["maxReplicaCount"]) == 4
