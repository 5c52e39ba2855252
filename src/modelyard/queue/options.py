"""How a queue worker consumes its stream (the ``modelyard queue-worker`` flags)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from modelyard.queue.keys import DEFAULT_GROUP, DEFAULT_STREAM


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerConfig:
    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    consumer: str = ""
    """Consumer name prefix; ``<host>-<pid>`` when empty. Consumer i is ``<name>-<i>``."""
    endpoint: str | None = None
    """Default endpoint key (``iris/1``) for entries without an ``endpoint`` field."""
    consumers: int = 1
    batch_size: int = 256
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_interval_s: float | None = None
    """How often each consumer runs XAUTOCLAIM; default ``min(claim_idle / 2, 5 s)``."""
    max_failures: int = 3
    result_ttl_s: int = 24 * 3600
    delete_acked: bool = True
    """XDEL entries once acknowledged, so the stream's length is the backlog."""
    gauge_interval_s: float = 2.0

    def consumer_name(self, i: int) -> str:
        return f"{self.consumer or default_consumer_name()}-{i}"
