"""Queue test fixtures: a unique stream name per test on the real Redis, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def stream(rclient: redis.Redis) -> Iterator[str]:
    """A fresh stream name; every key starting with it is deleted after the test."""
    name = f"test-queue-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(rclient.scan_iter(match=f"{name}*", count=1000))
    if keys:
        rclient.delete(*keys)
