"""The CLI against a real control plane: ``run_cli("model", "list")`` with the test's env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.client import Client
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import RunningControlPlane, run_control_plane


@pytest.fixture
def control_plane(settings: Settings) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings) as running:
        yield running


@pytest.fixture
def client(control_plane: RunningControlPlane) -> Iterator[Client]:
    with Client(control_plane.url, settings=control_plane.settings, timeout=10) as c:
        yield c


@pytest.fixture
def run_cli(control_plane: RunningControlPlane) -> CliHarness:
    return CliHarness(cli_env(control_plane.url, control_plane.home))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"not really a pickle, the control plane does not load it\n" * 100)
    return path
