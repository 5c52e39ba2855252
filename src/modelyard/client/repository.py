"""The SDK's model repository calls: artifacts (streamed, hash-checked) and models::

model = client.upload_model("model.pkl", name="iris", project="demo", framework="sklearn")
client.publish_model(model["id"])
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard import errors
from modelyard.client.transport import ApiClient

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called after every chunk of an upload or download."""

CHUNK_SIZE = 1024 * 1024


def pack_folder(folder: Path, dest: Path) -> Path:
    """Write ``folder`` as a gzipped tar at ``dest``; members are named ``<folder name>/...``.

    Ownership and times are normalised so the same content gives the same bytes (and sha256).
    """

    def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in Path(info.name).parts or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        open(dest, "wb") as raw,
        gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            tar.add(path, arcname=str(Path(folder.name) / rel), recursive=False, filter=_normalise)
    return dest


def _model_body(
    name: str,
    project: str,
    framework: str,
    tags: Sequence[str],
    publish: bool,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The fields every model registration sends (the artifact or URL is added by the caller)."""
    return {
        "name": name,
        "project": project,
        "framework": framework,
        "tags": list(tags),
        "published": publish,
        "metadata": dict(metadata or {}),
    }


class RepositoryCalls(ApiClient):
    """Artifacts and models; also uploads the preprocess code other calls bind to endpoints."""

    # -- artifacts ---------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike[str], progress: Progress | None = None) -> dict[str, Any]:
        """Stream a file (or a folder, packed as ``<name>.tar.gz`` first) to the artifact store.

        Returns ``{"sha256", "size", "filename", "kind"}``: an artifact reference as endpoints
        and models take it.
        """
        source = Path(path).expanduser()
        if source.is_dir():
            with tempfile.TemporaryDirectory(prefix="modelyard-pack-") as tmp:
                folder = source.resolve()
                packed = pack_folder(folder, Path(tmp) / f"{folder.name}.tar.gz")
                answer = self._upload(packed, progress)
                return {**answer, "filename": packed.name, "kind": "folder"}
        if not source.is_file():
            raise errors.NotFound(f"file {str(source)!r} not found")
        answer = self._upload(source, progress)
        return {**answer, "filename": source.name, "kind": "file"}

    def _upload(self, path: Path, progress: Progress | None) -> dict[str, Any]:
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            if progress:
                progress(0, total)
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    done += len(chunk)
                    yield chunk
                    if progress:
                        progress(done, total)

        headers = self._headers({"content-type": "application/octet-stream", "content-length": str(total)})
        response = self._send("POST", f"{self.url}/api/artifacts", headers=headers, content=chunks())
        answer: dict[str, Any] = response.json()
        return {"sha256": answer["sha256"], "size": answer.get("size", total)}

    def upload_bytes(self, data: bytes, filename: str) -> dict[str, Any]:
        """Upload in-memory bytes; returns an artifact reference like :meth:`upload_file`."""
        headers = self._headers({"content-type": "application/octet-stream"})
        response = self._send("POST", f"{self.url}/api/artifacts", headers=headers, content=data)
        answer = response.json()
        return {
            "sha256": answer["sha256"],
            "size": answer.get("size", len(data)),
            "filename": filename,
            "kind": "file",
        }

    def download(
        self,
        sha256: str,
        dest: str | os.PathLike[str],
        progress: Progress | None = None,
        *,
        verify: bool = True,
    ) -> Path:
        """Stream artifact ``sha256`` into ``dest`` (a file path, or a folder: ``dest/<sha256>``).

        The file appears atomically and, with ``verify``, only when its hash matches.
        """
        target = Path(dest).expanduser()
        if target.is_dir():
            target = target / sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        response = self._send(
            "GET", f"{self.url}/api/artifacts/{sha256}", headers=self._headers(), stream=True
        )
        digest = hashlib.sha256()
        total = int(response.headers.get("content-length") or 0)
        done = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total or done)
            if verify and digest.hexdigest() != sha256:
                raise errors.ModelyardError(
                    f"artifact {sha256} arrived corrupted (its sha256 is {digest.hexdigest()})"
                )
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        finally:
            response.close()
        return target

    # -- models ------------------------------------------------------------------------------

    def upload_model(
        self,
        path: str | os.PathLike[str],
        name: str,
        project: str,
        framework: str,
        tags: Sequence[str] = (),
        publish: bool = False,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a model file (or folder) and register it; returns the new Model."""
        artifact = self.upload_file(path, progress=progress)
        body = _model_body(name, project, framework, tags, publish, metadata)
        body.update(artifact_sha256=artifact["sha256"], filename=artifact["filename"])
        if artifact["kind"] == "folder":
            body["kind"] = "folder"
        return self._api("POST", "/models", json=body)

    def register_model_url(
        self,
        url: str,
        name: str,
        project: str,
        framework: str,
        tags: Sequence[str] = (),
        publish: bool = False,
        metadata: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> dict[str, Any]:
        """Register a remote file (http(s)://, s3://, gs://, az://) the control plane fetches.

        The control plane refuses (400) paths on its own disk and hosts on non-public networks
        unless its ``MODELYARD_MODEL_URL_SCHEMES`` / ``MODELYARD_MODEL_URL_PRIVATE_NETWORKS``
        allow them; upload a local file with :meth:`upload_model` instead.
        """
        body = {**_model_body(name, project, framework, tags, publish, metadata), "url": url}
        if filename:
            body["filename"] = filename
        return self._api("POST", "/models", json=body)

    def list_models(
        self,
        name: str | None = None,
        project: str | None = None,
        framework: str | None = None,
        tags: Sequence[str] | None = None,
        published: bool | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Models matching every given filter, newest first (``name`` is a full-match regex)."""
        params: list[tuple[str, str]] = []
        for key, value in (("name", name), ("project", project), ("framework", framework)):
            if value is not None:
                params.append((key, value))
        params.extend(("tags", tag) for tag in tags or ())
        if published is not None:
            params.append(("published", "true" if published else "false"))
        if limit is not None:
            params.append(("limit", str(limit)))
        return self._api("GET", "/models", params=params)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._api("GET", f"/models/{model_id}")

    def publish_model(self, model_id: str) -> dict[str, Any]:
        return self._api("POST", f"/models/{model_id}/publish")

    def tag_model(self, model_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> dict[str, Any]:
        return self._api("POST", f"/models/{model_id}/tags", json={"add": list(add), "remove": list(remove)})

    def remove_model(self, model_id: str) -> None:
        """Delete a model; :class:`~modelyard.errors.Conflict` while an endpoint uses it."""
        self._api("DELETE", f"/models/{model_id}")

    # -- endpoints ---------------------------------------------------------------------------

    def _preprocess_ref(self, preprocess: Any) -> dict[str, Any] | None:
        if preprocess is None:
            return None
        if isinstance(preprocess, Mapping):
            return {k: preprocess[k] for k in ("sha256", "filename", "kind") if k in preprocess}
        ref = self.upload_file(preprocess)
        return {"sha256": ref["sha256"], "filename": ref["filename"], "kind": ref["kind"]}
