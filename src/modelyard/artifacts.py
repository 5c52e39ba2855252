"""Content-addressed artifact storage on any fsspec URL.

Blobs live at ``<root>/blobs/<sha[:2]>/<sha>``: the name *is* the content's
sha256, so a replica that has a file with that name in its cache never needs to
fetch it again, and uploading the same bytes twice stores them once. Uploads
are streamed into ``<root>/tmp/`` while being hashed and only then moved into
place, so a half-written upload can never be served under a real hash. The
store is an object with no module state, built by the composition root from
``Settings.artifacts_url`` and ``artifacts_options``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec
import httpx
from fsspec.implementations.local import LocalFileSystem

from modelyard.errors import BadRequest, NotFound

CHUNK_SIZE = 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(sha: str) -> str:
    """Reject anything but 64 lowercase hex digits (it becomes part of a path)."""
    if not SHA256_RE.match(sha):
        raise BadRequest(f"artifact id {sha!r} is not a sha256 (64 lowercase hex digits)")
    return sha


class BlobWriter:
    """One upload in progress: ``write`` chunks, then ``commit`` (or ``abort``).

    Exposed so that async callers can feed chunks as they arrive from the
    network (each ``write`` is a short blocking call they may run in a thread).
    """

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._tmp = store._path("tmp", uuid.uuid4().hex)
        store.fs.makedirs(store._path("tmp"), exist_ok=True)
        self._file: IO[bytes] | None = store.fs.open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("upload already finished")
        if chunk:
            self._file.write(chunk)
            self._hash.update(chunk)
            self.size += len(chunk)

    def commit(self) -> tuple[str, int]:
        """Move the finished upload to its content address; returns ``(sha256, size)``."""
        if self._file is None:
            raise RuntimeError("upload already finished")
        self._file.close()
        self._file = None
        sha = self._hash.hexdigest()
        store = self._store
        final = store._blob_path(sha)
        if store.fs.exists(final):
            # Same bytes already stored: the upload is idempotent.
            self._remove_tmp()
        else:
            store.fs.makedirs(store._path("blobs", sha[:2]), exist_ok=True)
            store.fs.mv(self._tmp, final)
        return sha, self.size

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self._store.fs.rm(self._tmp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._file is not None:
            self.abort()


class ArtifactStore:
    """Blobs by sha256 under ``url`` (a local folder, ``s3://bucket/prefix``, ``gs://``...)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = str(root).rstrip("/")
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(self.root, exist_ok=True)

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _blob_path(self, sha: str) -> str:
        return self._path("blobs", sha[:2], sha)

    # -- writing -----------------------------------------------------------

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store the bytes of ``chunks`` (never all in memory); returns ``(sha256, size)``."""
        with self.writer() as w:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_stream([data])

    def put_file(self, path: str | os.PathLike[str]) -> tuple[str, int]:
        with open(path, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK_SIZE), b""))

    def fetch_url(self, url: str, *, options: dict[str, Any] | None = None) -> tuple[str, int]:
        """Copy the file at ``url`` (http(s), s3, gs, az, ``file://`` or a local path) into the store.

        http(s) goes through httpx (a declared dependency) rather than fsspec's
        aiohttp-based filesystem; every other scheme through fsspec.
        """
        if url.startswith(("http://", "https://")):
            return self._fetch_http(url)
        try:
            with fsspec.open(url, "rb", **(options or {})) as f:
                return self.put_stream(iter(lambda: f.read(CHUNK_SIZE), b""))
        except FileNotFoundError:
            raise NotFound(f"model url {url!r} not found") from None
        except IsADirectoryError:
            raise BadRequest(f"model url {url!r} is a folder, not a file") from None
        except (ImportError, ValueError) as exc:
            raise BadRequest(f"cannot read model url {url!r}: {exc}") from None

    def _fetch_http(self, url: str) -> tuple[str, int]:
        try:
            with (
                httpx.Client(follow_redirects=True, timeout=60.0) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code == 404:
                    raise NotFound(f"model url {url!r} not found (HTTP 404)")
                if response.status_code >= 400:
                    raise BadRequest(f"cannot fetch model url {url!r}: HTTP {response.status_code}")
                return self.put_stream(response.iter_bytes(CHUNK_SIZE))
        except httpx.HTTPError as exc:
            raise BadRequest(f"cannot fetch model url {url!r}: {exc}") from None

    # -- reading -----------------------------------------------------------

    def exists(self, sha: str) -> bool:
        return SHA256_RE.match(sha) is not None and bool(self.fs.exists(self._blob_path(sha)))

    def size(self, sha: str) -> int:
        check_sha256(sha)
        try:
            return int(self.fs.size(self._blob_path(sha)))
        except FileNotFoundError:
            raise NotFound(f"artifact {sha} not found") from None

    def open(self, sha: str) -> IO[bytes]:
        """A binary file object of the blob; 404-style :class:`NotFound` when missing."""
        check_sha256(sha)
        try:
            f: IO[bytes] = self.fs.open(self._blob_path(sha), "rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {sha} not found") from None
        return f

    def iter_bytes(self, sha: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The blob in chunks. Opens eagerly, so a missing blob raises before the first chunk."""
        f = self.open(sha)

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return chunks()

    def delete(self, sha: str) -> None:
        check_sha256(sha)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._blob_path(sha))
