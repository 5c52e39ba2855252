"""A replica whose control plane is down retries every ``sync_retry_s`` but says so with back-off.

Real parts: an inference replica (uvicorn in a thread) following a port where nothing listens,
then a real control plane started on that port.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import pytest

from modelyard.control.api import create_control_app
from modelyard.server import create_inference_app
from modelyard.serving import sync
from modelyard.settings import Settings
from tests.servers import free_port, run_uvicorn_in_thread
from tests.serving.helpers import wait_for

pytestmark = pytest.mark.slow


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modelyard.sync" and text in r.getMessage()]


def test_unreachable_is_logged_with_back_off_and_recovery_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="modelyard.sync")
    # the test's own scale: 0.05 s between attempts, the second line after 1 s (10 s in production)
    monkeypatch.setattr(sync, "UNREACHABLE_LOG_FIRST_GAP_S", 1.0)
    port = free_port()
    replica = settings.model_copy(
        update={
            "home": tmp_path / "replica",
            "control_plane_url": f"http://127.0.0.1:{port}",
            "sync_retry_s": 0.05,
            "sync_wait_s": 2,
        }
    )
    with run_uvicorn_in_thread(create_inference_app(replica)) as replica_url:
        time.sleep(2.0)  # ~40 attempts; lines at about 0.05 s, 1.05 s (gap 1 s), then 3.05 s (gap 2 s)
        unreachable = _lines(caplog, "control plane unreachable")
        assert len(unreachable) == 2, unreachable
        assert "next report in 1 s" in unreachable[0]
        assert "for 1 s" in unreachable[1] and "next report in 2 s" in unreachable[1]
        attempts = int(re.search(r"\((\d+) attempts\)", unreachable[1]).group(1))  # type: ignore[union-attr]
        assert attempts >= 10, unreachable[1]  # it kept retrying every 0.05 s meanwhile
        assert httpx.get(f"{replica_url}/status").json()["control_plane_connected"] is False

        with run_uvicorn_in_thread(create_control_app(settings), port):
            wait_for(lambda: _lines(caplog, "reachable again"), timeout=10)
            back = _lines(caplog, "reachable again")
            assert len(back) == 1 and "failed attempts" in back[0], back
            assert wait_for(lambda: httpx.get(f"{replica_url}/status").json()["control_plane_connected"])
    assert len(_lines(caplog, "control plane unreachable")) <= 3
