"""Artifacts on a replica: fetched from the control plane by hash, verified, cached.

Layout: ``<cache>/blobs/<sha256>/<filename>``. The original file name is kept
because engines and user code look at the extension (``.json`` for XGBoost,
``.pt2`` for a torch.export program, ``.tar.gz`` for a code folder). A blob is
written to a temporary name and renamed only once its hash matches, so a
crash mid-download never leaves a corrupt file that looks cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import httpx

from modelyard.config import ArtifactRef
from modelyard.errors import ModelLoadError, NotFound, Unavailable


class ArtifactCache:
    """Downloads artifacts once per replica machine and hands out local paths."""

    def __init__(self, cache_dir: Path, http: httpx.AsyncClient) -> None:
        self.root = Path(cache_dir) / "blobs"
        self.http = http
        self._locks: dict[str, asyncio.Lock] = {}

    def cached_path(self, ref: ArtifactRef) -> Path:
        return self.root / ref.sha256 / (Path(ref.filename).name or "blob")

    async def path_for(self, ref: ArtifactRef) -> Path:
        """Local path of ``ref``, downloading and verifying it first if needed."""
        target = self.cached_path(ref)
        if target.exists():
            return target
        lock = self._locks.setdefault(ref.sha256, asyncio.Lock())
        async with lock:
            if not target.exists():
                await self._download(ref, target)
        return target

    async def _download(self, ref: ArtifactRef, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            async with self.http.stream("GET", f"/api/artifacts/{ref.sha256}") as response:
                if response.status_code == 404:
                    raise NotFound(f"artifact {ref.sha256} ({ref.filename}) is not in the repository")
                if response.status_code != 200:
                    raise Unavailable(
                        f"artifact {ref.sha256} ({ref.filename}): control plane answered "
                        f"{response.status_code}"
                    )
                with open(tmp, "wb") as out:
                    async for chunk in response.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot download artifact {ref.filename}: {exc}") from None
        if digest.hexdigest() != ref.sha256:
            tmp.unlink(missing_ok=True)
            raise ModelLoadError(
                f"artifact {ref.filename}: downloaded bytes hash to {digest.hexdigest()}, "
                f"expected {ref.sha256}"
            )
        os.replace(tmp, target)

    def prune(self, keep: set[str]) -> None:
        """Remove cached blobs whose hash is not in ``keep`` (not called on the hot path)."""
        if not self.root.exists():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
