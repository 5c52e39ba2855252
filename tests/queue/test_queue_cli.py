"""Which control plane and token ``queue-worker`` uses: its flags, then the root options, then env."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard.cli import _common as common
from modelyard.cli.queue_worker import worker_settings


@pytest.fixture
def root_options() -> Iterator[None]:
    token = common._globals.set(common.Globals())
    yield
    common._globals.reset(token)


@pytest.mark.usefixtures("root_options")
def test_flags_then_root_options_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_URL", "http://env:1")
    monkeypatch.setenv("MODELYARD_TOKEN", "env-token")
    monkeypatch.delenv("MODELYARD_CONTROL_PLANE_URL", raising=False)
    # nothing given: the environment
    s = worker_settings(control_plane_url=None, token=None, redis_url=None)
    assert (s.resolved_control_plane_url(), s.token) == ("http://env:1", "env-token")
    # the root options beat the environment
    common.set_globals(common.Globals(url="http://root:2/", token="root-token"))
    s = worker_settings(control_plane_url=None, token=None)
    assert (s.resolved_control_plane_url(), s.token) == ("http://root:2", "root-token")
    monkeypatch.setenv("MODELYARD_CONTROL_PLANE_URL", "http://env-cp:3")
    assert worker_settings().resolved_control_plane_url() == "http://root:2"
    # the command's own flags beat both
    s = worker_settings(control_plane_url="http://flag:4", token="flag-token")
    assert (s.resolved_control_plane_url(), s.token) == ("http://flag:4", "flag-token")
