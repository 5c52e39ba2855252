"""Artifacts on a replica: fetched from the control plane by hash, verified, cached.

Layout: ``<cache>/blobs/<sha256>/<filename>``. The original file name is kept
because engines and user code look at the extension (``.json`` for XGBoost,
``.pt2`` for a torch.export program, ``.tar.gz`` for a code folder). A blob is
written to a temporary name and renamed only once its hash matches, so a
crash mid-download never leaves a corrupt file that looks cached.

The sha256 and file name come from the control plane's database and become path parts
here, so :meth:`ArtifactCache.cached_path` refuses any that could leave the cache folder
(``..``, separators, NUL, not a sha256...) before anything is created or written, even if
the control plane let one in.

A cached blob is hashed again the first time this process uses it: the cache
folder outlives the process (and is shared by the workers of one machine), so
a file damaged on disk, or put there by something other than this code, is
found, deleted and downloaded again instead of being loaded. Later uses in the
same process trust the check already made, so a reload costs no hashing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import httpx
import orjson

from modelyard.artifact_names import SHA256_RE, filename_problem
from modelyard.config import ArtifactRef
from modelyard.errors import ModelLoadError, NotFound, Unavailable
from modelyard.preprocess_archive import ArchiveLimits

log = logging.getLogger("modelyard.serving.fetch")

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    """Downloads artifacts once per replica machine and hands out local paths."""

    def __init__(
        self, cache_dir: Path, http: httpx.AsyncClient, archive_limits: ArchiveLimits | None = None
    ) -> None:
        self.root = Path(cache_dir) / "blobs"
        self.http = http
        self.archive_limits = archive_limits or ArchiveLimits()
        """What a preprocess code archive fetched here may unpack to (``Settings.preprocess_archive_*``)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._verified: set[str] = set()

    def cached_path(self, ref: ArtifactRef) -> Path:
        """``<cache>/blobs/<sha256>/<filename>``; :class:`ModelLoadError` naming the problem when
        ``ref`` would put it anywhere else."""
        if not SHA256_RE.match(ref.sha256):
            raise ModelLoadError(
                f"artifact {ref.filename!r}: id {ref.sha256!r} is not a sha256; nothing was downloaded"
            )
        # Names registered before the control plane checked them keep working as before (their
        # last '/' component), as long as that component is a plain file name itself.
        name = ref.filename.rsplit("/", 1)[-1]
        problem = filename_problem(name)
        if problem is not None:
            raise ModelLoadError(
                f"artifact {ref.sha256}: file name {ref.filename!r} {problem}; nothing was downloaded"
            )
        path = self.root / ref.sha256 / name
        if path.resolve().parent != (self.root / ref.sha256).resolve():  # belt and braces
            raise ModelLoadError(f"artifact {ref.sha256}: file name {ref.filename!r} leaves the cache folder")
        return path

    async def path_for(self, ref: ArtifactRef) -> Path:
        """Local path of ``ref``, downloading and verifying it first if needed."""
        target = self.cached_path(ref)
        if ref.sha256 in self._verified and target.exists():
            return target
        lock = self._locks.setdefault(ref.sha256, asyncio.Lock())
        async with lock:
            if ref.sha256 in self._verified and target.exists():
                return target
            if target.exists() and not await self._cached_copy_is_intact(ref, target):
                target.unlink(missing_ok=True)
            if not target.exists():
                await self._download(ref, target)
            self._verified.add(ref.sha256)
        return target

    async def _cached_copy_is_intact(self, ref: ArtifactRef, target: Path) -> bool:
        actual = await asyncio.to_thread(file_sha256, target)
        if actual == ref.sha256:
            return True
        log.warning(
            "cached artifact %s (%s) is damaged (its bytes hash to %s); downloading it again",
            ref.sha256,
            ref.filename,
            actual,
        )
        return False

    async def _download(self, ref: ArtifactRef, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            async with self.http.stream("GET", f"/api/artifacts/{ref.sha256}") as response:
                if response.status_code == 404:
                    raise NotFound(f"artifact {ref.sha256} ({ref.filename}) is not in the repository")
                if response.status_code in (401, 403):
                    raise Unavailable(
                        f"artifact {ref.sha256} ({ref.filename}): the control plane refused the "
                        f"download ({response.status_code}); give this replica a valid token "
                        "(MODELYARD_TOKEN or --token)"
                    )
                if response.status_code != 200:
                    raise Unavailable(
                        f"artifact {ref.sha256} ({ref.filename}): control plane answered "
                        f"{response.status_code}"
                    )
                with open(tmp, "wb") as out:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot download artifact {ref.filename}: {exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != ref.sha256:
            tmp.unlink(missing_ok=True)
            raise ModelLoadError(
                f"artifact {ref.filename}: downloaded bytes hash to {digest.hexdigest()}, "
                f"expected {ref.sha256}; the file was not kept"
            )
        os.replace(tmp, target)

    def referenced(self) -> set[str] | None:
        """Hashes the last-known configurations next to this cache refer to (every service using
        the folder, not only this replica's), or ``None`` when one of them cannot be read."""
        keep: set[str] = set()
        for file in sorted(self.root.parent.glob("service-*.json")):
            try:
                config = orjson.loads(file.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                return None  # cannot tell what it needs: remove nothing
            for endpoint in config.get("endpoints") or []:
                model = endpoint.get("model") or {}
                for ref in (model.get("artifact"), endpoint.get("preprocess")):
                    if isinstance(ref, dict) and ref.get("sha256"):
                        keep.add(str(ref["sha256"]))
        return keep

    def prune_unreferenced(self, min_age_s: float) -> list[str]:
        """Remove blobs no last-known configuration refers to, once older than ``min_age_s``.

        The last-known copies are what a replica restarts from while the control plane is
        down, so whatever they name stays; a rollback to a removed version downloads again.
        """
        keep = self.referenced()
        if keep is None:
            return []
        removed = self.prune(keep, min_age_s)
        if removed:
            log.info("artifact cache: removed %d blob(s) no configuration refers to", len(removed))
        return removed

    def prune(self, keep: set[str], min_age_s: float = 0.0) -> list[str]:
        """Remove cached blobs whose hash is not in ``keep``; returns the hashes removed.

        Not called on the hot path. The cache folder is shared by the worker processes of a
        machine, so a blob another worker is still downloading (a ``.part`` file inside) is
        never removed, nor one touched less than ``min_age_s`` seconds ago (a worker on a newer
        revision may have just fetched it).
        """
        if not self.root.exists():
            return []
        removed = []
        now = time.time()
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name in keep:
                continue
            try:
                in_progress = any(p.name.endswith(".part") for p in entry.iterdir())
                recent = now - entry.stat().st_mtime < min_age_s
            except OSError:
                continue
            if in_progress or recent:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            self._verified.discard(entry.name)
            removed.append(entry.name)
        return removed
