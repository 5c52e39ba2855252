"""Content-addressed artifact storage on any fsspec URL.

Blobs live at ``<root>/blobs/<sha[:2]>/<sha>``: the name *is* the content's
sha256, so a replica that has a file with that name in its cache never needs to
fetch it again, and uploading the same bytes twice stores them once. Uploads
are streamed into ``<root>/tmp/`` while being hashed and only then moved into
place, so a half-written upload can never be served under a real hash; one whose
hash differs from the sha256 the caller declared is deleted, never stored.

A process killed mid-upload (``kill -9``, OOM) leaves its temp file behind. Temp
names carry the writer's host, pid and a per-process tag, so each new store removes
those whose writer is gone (same host, pid dead or reused by a later process) and any
untouched for ``stale_upload_s``, while uploads other live processes are still writing
stay. The store is built by the composition root from :meth:`ArtifactStore.from_settings`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import IO, TYPE_CHECKING, Any

import fsspec
import httpx
from fsspec.implementations.local import LocalFileSystem

from modelyard.artifact_names import SHA256_RE, check_filename, check_sha256
from modelyard.artifact_urls import HTTP_SCHEMES, MAX_REDIRECTS, UrlPolicy
from modelyard.errors import BadRequest, NotFound
from modelyard.preprocess_archive import ArchiveLimits, inspect_archive, is_archive

if TYPE_CHECKING:
    from modelyard.config import ArtifactRef
    from modelyard.settings import Settings

__all__ = ["SHA256_RE", "ArtifactStore", "BlobWriter", "check_sha256"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024

_PROCESS_TAG = uuid.uuid4().hex[:8]
"""Tells this process from an earlier one that had the same pid (a restarted container)."""
_TMP_RE = re.compile(r"^([0-9a-f]{12})-(\d+)-([0-9a-f]{8})-[0-9a-f]{32}\.part$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class BlobWriter:
    """One upload in progress: ``write`` chunks, then ``commit`` (or ``abort``).

    Exposed so that async callers can feed chunks as they arrive from the
    network (each ``write`` is a short blocking call they may run in a thread).
    """

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        name = f"{_host_tag()}-{os.getpid()}-{_PROCESS_TAG}-{uuid.uuid4().hex}.part"
        self._tmp = store._path("tmp", name)
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

    def commit(self, expected_sha256: str | None = None) -> tuple[str, int]:
        """Move the finished upload to its content address; returns ``(sha256, size)``.

        With ``expected_sha256`` (what the uploader says it sent), other bytes are deleted and
        refused with :class:`BadRequest`: a corrupted upload is never stored under any hash.
        """
        if self._file is None:
            raise RuntimeError("upload already finished")
        self._file.close()
        self._file = None
        sha = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256 != sha:
            self._remove_tmp()
            raise BadRequest(
                f"artifact upload: expected sha256 {expected_sha256}, but the {self.size} bytes "
                f"received hash to {sha}; nothing was stored"
            )
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

    def __init__(
        self,
        url: str,
        options: dict[str, Any] | None = None,
        *,
        url_policy: UrlPolicy | None = None,
        stale_upload_s: float = 3600.0,
        archive_limits: ArchiveLimits | None = None,
    ) -> None:
        """``url_policy``: which URLs :meth:`fetch_url` reads (default: http(s) to public
        addresses and object stores); ``stale_upload_s``: age after which any temp upload is
        removed at start; ``archive_limits``: what :meth:`check_code` lets code archives hold."""
        self.url = url
        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = str(root).rstrip("/")
        self.url_policy = url_policy or UrlPolicy()
        self.stale_upload_s = stale_upload_s
        self.archive_limits = archive_limits or ArchiveLimits()
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(self.root, exist_ok=True)
        self.remove_stale_uploads()

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(
            settings.resolved_artifacts_url(),
            dict(settings.artifacts_options),
            url_policy=UrlPolicy.from_settings(settings),
            stale_upload_s=settings.artifacts_stale_upload_s,
            archive_limits=ArchiveLimits.from_settings(settings),
        )

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _blob_path(self, sha: str) -> str:
        return self._path("blobs", sha[:2], sha)

    # -- writing -----------------------------------------------------------

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def remove_stale_uploads(self) -> list[str]:
        """Delete temp uploads nobody is writing any more; returns their paths.

        Removed: a temp file of this host whose writer process is gone (its pid is dead, or is
        this process under an earlier tag), and any temp file untouched for ``stale_upload_s``
        (writers on other hosts, pids reused since, names of an older format).
        """
        try:
            entries = [str(p) for p in self.fs.ls(self._path("tmp"), detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as exc:  # best effort: an unreachable store must not stop a start
            log.warning("artifact store: cannot list %s for interrupted uploads: %s", self._path("tmp"), exc)
            return []
        host, now, removed = _host_tag(), time.time(), []
        for path in entries:
            if not (self._writer_gone(path, host) or self._age_s(path, now) > self.stale_upload_s):
                continue
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rm(path)
                removed.append(path)
        if removed:
            log.warning(
                "artifact store: removed %d interrupted upload(s) from %s", len(removed), self._path("tmp")
            )
        return removed

    @staticmethod
    def _writer_gone(path: str, host: str) -> bool:
        match = _TMP_RE.match(path.rstrip("/").rsplit("/", 1)[-1])
        if match is None or match.group(1) != host:
            return False  # cannot tell: left to the age rule
        pid, tag = int(match.group(2)), match.group(3)
        if pid == os.getpid():
            return tag != _PROCESS_TAG
        return not _pid_alive(pid)

    def _age_s(self, path: str, now: float) -> float:
        try:
            modified = self.fs.modified(path)
        except (NotImplementedError, OSError, KeyError):  # filesystems without mtimes, a file gone
            return 0.0  # unknown: never removed for age
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return now - modified.timestamp()

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
        """Copy the file at ``url`` into the store, if :attr:`url_policy` accepts it.

        http(s) goes through httpx (a declared dependency) rather than fsspec's
        aiohttp-based filesystem, to addresses the policy checked; every other accepted
        scheme (object stores; ``file`` or others only when configured) through fsspec.
        """
        if self.url_policy.check(url) in HTTP_SCHEMES:
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
        """GET ``url``, following redirects by hand so every hop's address is checked."""
        current, what = url, f"model url {url!r}"
        try:
            with httpx.Client(follow_redirects=False, timeout=60.0) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    request = self.url_policy.pinned_request(client, current, what)
                    response = client.send(request, stream=True)
                    try:
                        if response.is_redirect:
                            current = self.url_policy.redirect(current, response.headers.get("location"))
                            what = f"model url {url!r} (redirected to {current!r})"
                            continue
                        if response.status_code == 404:
                            raise NotFound(f"{what} not found (HTTP 404)")
                        if response.status_code >= 400:
                            raise BadRequest(f"cannot fetch {what}: HTTP {response.status_code}")
                        return self.put_stream(response.iter_bytes(CHUNK_SIZE))
                    finally:
                        response.close()
        except httpx.HTTPError as exc:
            raise BadRequest(f"cannot fetch {what}: {exc}") from None
        raise BadRequest(f"model url {url!r}: more than {MAX_REDIRECTS} redirects")

    # -- code archives -------------------------------------------------------

    def check_code(self, ref: ArtifactRef) -> None:
        """Refuse preprocess code a replica could not unpack safely: a bad file name (400), or an
        archive over :attr:`archive_limits` (413) or with unsafe members (400). A ``.py`` file
        is imported as it is; anything else that is a tar or zip (or any ``folder``) is extracted
        by the replicas, so it is read here the same way, without writing anything."""
        check_filename(ref.filename, "preprocess")
        if ref.filename.endswith(".py"):
            return
        with self.open(ref.sha256) as f:
            if ref.kind == "folder" or is_archive(f):
                inspect_archive(f, ref.filename, self.archive_limits)

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
