"""ArtifactStore on real filesystems: a local folder, fsspec's memory://, and a real HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.artifact_urls import DEFAULT_SCHEMES, UrlPolicy, parse_networks
from modelyard.artifacts import ArtifactStore
from modelyard.errors import BadRequest, NotFound

LOCAL_FILES = UrlPolicy(schemes=frozenset({*DEFAULT_SCHEMES, "file"}))
"""What an operator sets to let callers register paths on the control plane's disk."""
LOOPBACK = UrlPolicy(private_networks=parse_networks(["127.0.0.0/8"]))
"""What lets these tests fetch from an HTTP server on this machine."""


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"), {})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server serving a temporary folder on a free port."""
    folder = tmp_path / "www"
    folder.mkdir()

    def handler(*args: Any, **kwargs: Any) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_put_stream_is_content_addressed_and_idempotent(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"abc" * 1000
    sha, size = store.put_stream([data[:100], b"", data[100:]])
    assert sha == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert (tmp_path / "artifacts" / "blobs" / sha[:2] / sha).read_bytes() == data
    assert store.put_bytes(data) == (sha, size)
    assert store.exists(sha)
    assert store.size(sha) == size
    assert b"".join(store.iter_bytes(sha, chunk_size=7)) == data
    with store.open(sha) as f:
        assert f.read() == data
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []  # no temp files left behind


def test_missing_and_malformed_ids(store: ArtifactStore) -> None:
    missing = "0" * 64
    assert not store.exists(missing)
    assert not store.exists("../../etc/passwd")
    with pytest.raises(NotFound, match=missing):
        store.open(missing)
    with pytest.raises(NotFound, match=missing):
        store.iter_bytes(missing)
    with pytest.raises(BadRequest, match="not a sha256"):
        store.open("../../etc/passwd")


def test_failed_upload_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        store.put_stream(chunks())
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []
    assert not (tmp_path / "artifacts" / "blobs").exists()


def test_fetch_local_path_and_file_url(tmp_path: Path) -> None:
    """Only with ``file`` among the schemes (MODELYARD_MODEL_URL_SCHEMES): refused by default."""
    src = tmp_path / "model.pkl"
    src.write_bytes(b"model-bytes")
    expected = (hashlib.sha256(b"model-bytes").hexdigest(), 11)
    with pytest.raises(BadRequest, match="path on the control plane's disk"):
        ArtifactStore(str(tmp_path / "artifacts")).fetch_url(str(src))
    store = ArtifactStore(str(tmp_path / "artifacts"), url_policy=LOCAL_FILES)
    assert store.fetch_url(str(src)) == expected
    assert store.fetch_url(src.as_uri()) == expected
    with pytest.raises(NotFound, match=r"nope\.pkl"):
        store.fetch_url(str(tmp_path / "nope.pkl"))


def test_fetch_http(tmp_path: Path, http_dir: tuple[str, Path]) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"), url_policy=LOOPBACK)
    base, folder = http_dir
    payload = bytes(range(256)) * 4096
    (folder / "m.onnx").write_bytes(payload)
    sha, size = store.fetch_url(f"{base}/m.onnx")
    assert (sha, size) == (hashlib.sha256(payload).hexdigest(), len(payload))
    assert b"".join(store.iter_bytes(sha)) == payload
    with pytest.raises(NotFound, match=r"missing\.onnx"):
        store.fetch_url(f"{base}/missing.onnx")


def test_any_fsspec_filesystem_works() -> None:
    """memory:// stands in for object stores: no rename, no local paths."""
    memory = UrlPolicy(schemes=frozenset({*DEFAULT_SCHEMES, "memory"}))
    mem = ArtifactStore("memory://modelyard-test-artifacts", {}, url_policy=memory)
    sha, _ = mem.put_bytes(b"in memory")
    assert mem.exists(sha)
    assert b"".join(mem.iter_bytes(sha)) == b"in memory"
    sha2, _ = mem.fetch_url("memory://modelyard-test-artifacts/blobs/" + sha[:2] + "/" + sha)
    assert sha2 == sha
    mem.delete(sha)
    assert not mem.exists(sha)
