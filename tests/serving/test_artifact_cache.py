"""The replica's artifact cache against a real control plane: reuse, hash checks, pruning.

Requests are counted with an httpx event hook on the cache's own client (every real request
the cache sends), and reuse is also proven with the control plane stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from modelyard.config import ArtifactRef, ServiceConfig
from modelyard.errors import ModelLoadError, NotFound, Unavailable
from modelyard.serving.fetch import ArtifactCache
from modelyard.settings import Settings
from tests.servers import RunningControlPlane, run_control_plane

MODEL = b"model bytes " * 1000


@pytest.fixture
def control(settings: Settings) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings) as running:
        yield running


def upload(control: RunningControlPlane, data: bytes, filename: str = "model.pkl") -> ArtifactRef:
    headers = {"authorization": f"Bearer {control.admin_token}"}
    answer = httpx.post(f"{control.url}/api/artifacts", content=data, headers=headers, timeout=30)
    assert answer.status_code == 201, answer.text
    return ArtifactRef(sha256=answer.json()["sha256"], filename=filename, size=len(data))


def stored_blob(control: RunningControlPlane, sha: str) -> Path:
    """The control plane's own copy (local artifact store: ``<home>/artifacts/blobs/ab/abcd...``)."""
    path = control.home / "artifacts" / "blobs" / sha[:2] / sha
    assert path.is_file()
    return path


class Fetcher:
    """An :class:`ArtifactCache` with its own client, counting the GETs it really sends."""

    def __init__(self, url: str, token: str | None, cache_dir: Path) -> None:
        self.url = url
        self.token = token
        self.cache_dir = cache_dir
        self.requests: list[str] = []

    def run(self, *refs: ArtifactRef) -> list[Path]:
        async def go() -> list[Path]:
            async def count(request: httpx.Request) -> None:
                self.requests.append(request.url.path)

            headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
            async with httpx.AsyncClient(
                base_url=self.url, headers=headers, event_hooks={"request": [count]}, timeout=30
            ) as http:
                cache = ArtifactCache(self.cache_dir, http)
                return list(await asyncio.gather(*(cache.path_for(ref) for ref in refs)))

        return asyncio.run(go())


def test_cached_file_is_reused_without_downloading(control: RunningControlPlane, tmp_path: Path) -> None:
    ref = upload(control, MODEL)
    fetcher = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    # three concurrent requests for the same artifact: one download
    paths = fetcher.run(ref, ref, ref)
    assert fetcher.requests == [f"/api/artifacts/{ref.sha256}"]
    assert len(set(paths)) == 1
    path = paths[0]
    assert path == tmp_path / "cache" / "blobs" / ref.sha256 / "model.pkl"
    assert path.read_bytes() == MODEL
    # a new process on the same machine (a fresh cache object): no request at all
    again = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    assert again.run(ref) == [path]
    assert again.requests == []
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]


def test_cached_file_is_served_while_the_control_plane_is_down(settings: Settings, tmp_path: Path) -> None:
    with run_control_plane(settings) as control:
        ref = upload(control, MODEL)
        url, token = control.url, control.admin_token
        [path] = Fetcher(url, token, tmp_path / "cache").run(ref)
    # the control plane is stopped: nothing answers on its port
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/api/health", timeout=2)
    offline = Fetcher(url, token, tmp_path / "cache")
    assert offline.run(ref) == [path]
    assert path.read_bytes() == MODEL
    # an artifact that was never fetched cannot come from anywhere: a clear error, no file
    other = ArtifactRef(sha256=hashlib.sha256(b"other").hexdigest(), filename="other.pkl")
    with pytest.raises(Unavailable, match=r"cannot download artifact other\.pkl"):
        offline.run(other)
    assert not (tmp_path / "cache" / "blobs" / other.sha256 / "other.pkl").exists()


def test_served_bytes_that_do_not_match_the_hash_are_refused(
    control: RunningControlPlane, tmp_path: Path
) -> None:
    ref = upload(control, MODEL)
    stored_blob(control, ref.sha256).write_bytes(b"tampered in the store")  # the control plane serves it
    fetcher = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    with pytest.raises(ModelLoadError) as refused:
        fetcher.run(ref)
    message = str(refused.value)
    assert "model.pkl" in message and ref.sha256 in message
    assert hashlib.sha256(b"tampered in the store").hexdigest() in message
    # nothing that looks cached, no partial file left behind
    blob_dir = tmp_path / "cache" / "blobs" / ref.sha256
    assert not blob_dir.exists() or list(blob_dir.iterdir()) == []
    # once the store is repaired, the next load fetches it properly
    stored_blob(control, ref.sha256).write_bytes(MODEL)
    [path] = fetcher.run(ref)
    assert path.read_bytes() == MODEL


def test_a_damaged_cached_file_is_fetched_again(control: RunningControlPlane, tmp_path: Path) -> None:
    ref = upload(control, MODEL)
    fetcher = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    [path] = fetcher.run(ref)
    path.write_bytes(b"bit rot")  # damaged on disk after it was cached
    again = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    assert again.run(ref) == [path]
    assert again.requests == [f"/api/artifacts/{ref.sha256}"]
    assert path.read_bytes() == MODEL
    # damaged and the control plane serves bad bytes too: refused, the damaged copy is not used
    path.write_bytes(b"bit rot")
    stored_blob(control, ref.sha256).write_bytes(b"bad too")
    with pytest.raises(ModelLoadError, match="expected " + ref.sha256):
        Fetcher(control.url, control.admin_token, tmp_path / "cache").run(ref)
    assert not path.exists()


def test_missing_artifact_and_missing_token_are_clear_errors(
    control: RunningControlPlane, tmp_path: Path
) -> None:
    missing = ArtifactRef(sha256="0" * 64, filename="gone.pkl")
    with pytest.raises(NotFound, match=r"gone\.pkl"):
        Fetcher(control.url, control.admin_token, tmp_path / "cache").run(missing)
    ref = upload(control, MODEL)
    with pytest.raises(Unavailable, match=r"refused the download \(401\).*token"):
        Fetcher(control.url, None, tmp_path / "cache").run(ref)
    with pytest.raises(Unavailable, match=r"\(403\)"):
        Fetcher(control.url, "my_wrong", tmp_path / "cache").run(ref)
    assert not (tmp_path / "cache" / "blobs" / ref.sha256 / "model.pkl").exists()


def test_prune_keeps_what_is_in_use_and_what_is_still_downloading(
    control: RunningControlPlane, tmp_path: Path
) -> None:
    keep, old, fresh = (upload(control, data) for data in (b"keep", b"old", b"fresh"))
    fetcher = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    fetcher.run(keep, old, fresh)
    blobs = tmp_path / "cache" / "blobs"
    hour_ago = time.time() - 3600
    for ref in (keep, old):
        os.utime(blobs / ref.sha256, (hour_ago, hour_ago))
    downloading = blobs / ("d" * 64)
    downloading.mkdir()
    (downloading / ".model.pkl.123.part").write_bytes(b"half")
    os.utime(downloading, (hour_ago, hour_ago))

    async def prune(min_age_s: float) -> list[str]:
        async with httpx.AsyncClient(base_url=control.url) as http:
            return ArtifactCache(tmp_path / "cache", http).prune({keep.sha256}, min_age_s=min_age_s)

    # only blobs unused for a minute go: 'fresh' was just fetched, 'downloading' is in progress
    assert asyncio.run(prune(60)) == [old.sha256]
    assert sorted(p.name for p in blobs.iterdir()) == sorted([keep.sha256, fresh.sha256, "d" * 64])
    assert asyncio.run(prune(0)) == [fresh.sha256]
    assert sorted(p.name for p in blobs.iterdir()) == sorted([keep.sha256, "d" * 64])
    # a pruned blob is simply fetched again when a new revision needs it
    again = Fetcher(control.url, control.admin_token, tmp_path / "cache")
    [path] = again.run(old)
    assert path.read_bytes() == b"old" and again.requests == [f"/api/artifacts/{old.sha256}"]
    assert asyncio.run(prune(0)) == [old.sha256]
    assert asyncio.run(prune(0)) == []  # nothing left to prune


def test_prune_on_a_cache_that_was_never_used(tmp_path: Path) -> None:
    async def prune() -> list[str]:
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as http:
            return ArtifactCache(tmp_path / "nothing", http).prune(set())

    assert asyncio.run(prune()) == []


def test_prune_unreferenced_keeps_what_any_last_known_configuration_names(
    control: RunningControlPlane, tmp_path: Path
) -> None:
    a, b, model, gone = (upload(control, data) for data in (b"a-code", b"b-code", b"model", b"gone"))
    cache = tmp_path / "cache"
    Fetcher(control.url, control.admin_token, cache).run(a, b, model, gone)
    hour_ago = time.time() - 3600
    for ref in (a, b, model, gone):
        os.utime(cache / "blobs" / ref.sha256, (hour_ago, hour_ago))

    def last_known(service: str, *refs: tuple[ArtifactRef | None, ArtifactRef | None]) -> None:
        endpoints = [
            {
                "endpoint": f"e{i}",
                "version": "1",
                "engine": "sklearn",
                "model": None
                if m is None
                else {"id": "m", "name": "m", "project": "p", "version": 1, "framework": "sklearn",
                      "artifact": m.model_dump(mode="json")},
                "preprocess": None if p is None else p.model_dump(mode="json"),
            }
            for i, (m, p) in enumerate(refs)
        ]  # fmt: skip
        config = ServiceConfig.model_validate({"service": service, "revision": 3, "endpoints": endpoints})
        (cache / f"service-{service}.json").write_bytes(orjson.dumps(config.model_dump(mode="json")))

    # two services share the cache folder: what either one's last-known copy names stays
    last_known("one", (model, a))
    last_known("two", (None, b))

    async def prune(min_age_s: float) -> list[str]:
        async with httpx.AsyncClient(base_url=control.url) as http:
            return ArtifactCache(cache, http).prune_unreferenced(min_age_s)

    assert asyncio.run(prune(7200)) == [], "not old enough yet"
    assert asyncio.run(prune(60)) == [gone.sha256]
    assert sorted(p.name for p in (cache / "blobs").iterdir()) == sorted(r.sha256 for r in (a, b, model))
    # a copy that cannot be read: nobody can tell what it needs, so nothing goes
    (cache / "service-three.json").write_text("{not json")
    last_known("two", (None, None))
    assert asyncio.run(prune(0)) == []
    (cache / "service-three.json").unlink()
    assert asyncio.run(prune(0)) == [b.sha256]
