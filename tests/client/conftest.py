"""A real control plane (uvicorn in a thread) and an SDK client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard.client import Client
from modelyard.settings import Settings
from tests.servers import RunningControlPlane, run_control_plane


@pytest.fixture
def control_plane(settings: Settings) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings) as running:
        yield running


@pytest.fixture
def client(control_plane: RunningControlPlane) -> Iterator[Client]:
    """An admin client: finds its token in ``<home>/token`` like the CLI does."""
    with Client(control_plane.url, settings=control_plane.settings, timeout=10) as c:
        yield c
