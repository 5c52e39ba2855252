"""Interrupted and corrupted uploads leave nothing behind.

A control plane process killed with SIGKILL mid-upload leaves its temp file; the next start
removes it. A temp file another live process is still writing stays. An upload whose bytes do
not match the sha256 the caller declared is refused and not stored.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.servers import free_port, run_control_plane

from modelyard.artifacts import ArtifactStore
from modelyard.errors import BadRequest
from modelyard.settings import Settings

MODELYARD = str(Path(sys.executable).with_name("modelyard"))

WRITER = """
import sys, time
from modelyard.artifacts import ArtifactStore
writer = ArtifactStore(sys.argv[1]).writer()
writer.write(b"x" * 65536)
print("writing", flush=True)
time.sleep(600)
"""


def temp_files(root: Path) -> set[str]:
    folder = root / "tmp"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def wait_until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_writer(root: Path) -> subprocess.Popen[str]:
    """A real process with an upload in progress (its temp file open, half written)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    return proc


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_dead_writers_temp_file_goes_a_live_writers_stays(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    ArtifactStore(str(root))
    dead = start_writer(root)
    (dead_file,) = temp_files(root)
    kill9(dead)
    live = start_writer(root)
    try:
        (live_file,) = temp_files(root) - {dead_file}
        store = ArtifactStore(str(root))  # a start: cleans what nobody is writing
        assert temp_files(root) == {live_file}
        with store.writer() as mine:  # this process's own upload in progress stays too
            mine.write(b"mine")
            assert len(store.remove_stale_uploads()) == 0
            assert len(temp_files(root)) == 2
    finally:
        kill9(live)
    assert ArtifactStore(str(root)).remove_stale_uploads() == []  # the constructor did it already
    assert temp_files(root) == set()


def test_old_temp_files_go_whoever_wrote_them(tmp_path: Path) -> None:
    """Temp files of other hosts (a shared store) or of an older name format are removed once
    untouched for ``stale_upload_s``; recent ones stay."""
    root = tmp_path / "artifacts"
    (root / "tmp").mkdir(parents=True)
    other_host = f"{'0' * 12}-{os.getpid()}-{'1' * 8}-{'2' * 32}.part"
    legacy = "3" * 32
    for name in (other_host, legacy):
        (root / "tmp" / name).write_bytes(b"partial")
    ArtifactStore(str(root), stale_upload_s=60)
    assert temp_files(root) == {other_host, legacy}
    hour_ago = time.time() - 3600
    os.utime(root / "tmp" / other_host, (hour_ago, hour_ago))
    ArtifactStore(str(root), stale_upload_s=60)
    assert temp_files(root) == {legacy}
    os.utime(root / "tmp" / legacy, (hour_ago, hour_ago))
    ArtifactStore(str(root), stale_upload_s=60)
    assert temp_files(root) == set()


@pytest.mark.slow
def test_control_plane_killed_mid_upload_cleans_up_at_its_next_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(MODELYARD_HOME=str(home), MODELYARD_LOG_LEVEL="warning", MODELYARD_STATS_INTERVAL_S="0")
    log = tmp_path / "control-plane.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [MODELYARD, "control-plane", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"control plane exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{url}/api/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("the control plane", up)
        return proc

    proc = start()
    token = (home / "token").read_text().strip()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"m" * (1 << 20)
        release.wait(60)  # the upload stalls here, half sent
        yield b"never sent"

    def upload() -> None:
        try:
            httpx.post(
                f"{url}/api/artifacts",
                content=body(),
                headers={"authorization": f"Bearer {token}", "content-type": "application/octet-stream"},
                timeout=60,
            )
        except httpx.HTTPError:
            pass  # the server died under it

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    try:
        wait_until("the upload's temp file", lambda: temp_files(home / "artifacts"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        (left,) = temp_files(home / "artifacts")  # kill -9: nobody cleaned up
        release.set()
        sender.join(30)
        proc = start()
        assert temp_files(home / "artifacts") == set(), f"{left} survived the restart"
    finally:
        release.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_commit_with_another_sha256_stores_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    actual = hashlib.sha256(b"the real bytes").hexdigest()
    writer = store.writer()
    writer.write(b"the real bytes")
    with pytest.raises(BadRequest) as info:
        writer.commit("0" * 64)
    assert str(info.value) == (
        f"artifact upload: expected sha256 {'0' * 64}, but the 14 bytes received hash to {actual}; "
        "nothing was stored"
    )
    assert not store.exists(actual)
    assert temp_files(tmp_path / "artifacts") == set()


@pytest.mark.slow
def test_rest_upload_with_a_wrong_sha256_is_refused_and_not_stored(settings: Settings) -> None:
    data = b"weights" * 1000
    actual = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with run_control_plane(settings) as control:
        admin = {"authorization": f"Bearer {control.admin_token}"}
        r = httpx.post(f"{control.url}/api/artifacts", params={"sha256": wrong}, content=data, headers=admin)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            f"artifact upload: expected sha256 {wrong}, but the {len(data)} bytes received hash to "
            f"{actual}; nothing was stored"
        )
        assert httpx.get(f"{control.url}/api/artifacts/{actual}", headers=admin).status_code == 404
        assert temp_files(control.home / "artifacts") == set()
        r = httpx.post(f"{control.url}/api/artifacts", params={"sha256": actual}, content=data, headers=admin)
        assert r.status_code == 201 and r.json() == {"sha256": actual, "size": len(data)}
        assert httpx.get(f"{control.url}/api/artifacts/{actual}", headers=admin).content == data
