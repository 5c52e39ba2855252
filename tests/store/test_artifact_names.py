"""Artifact file names are one plain path component: refused at the API, and again on replicas.

Replicas keep artifacts at ``<cache>/blobs/<sha256>/<filename>``; a ``..`` or a non-sha256 id
already in the database must not make them write anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.servers import RunningControlPlane, run_control_plane

from modelyard.artifact_names import check_filename, filename_problem
from modelyard.config import ArtifactRef
from modelyard.errors import BadRequest, ModelLoadError
from modelyard.serving.fetch import ArtifactCache
from modelyard.settings import Settings

BAD_NAMES = [
    ("..", "is a reference to a folder, not a file name"),
    (".", "is a reference to a folder, not a file name"),
    ("../model.pkl", "contains '/'"),
    ("sub/model.pkl", "contains '/'"),
    ("/etc/passwd", "is an absolute path"),
    ("..\\..\\model.pkl", "contains '\\\\'"),
    ("\\\\server\\share\\m.pkl", "is an absolute path"),
    ("C:model.pkl", "starts with a drive letter"),
    ("model\x00.pkl", "contains a NUL character"),
    ("model\n.pkl", "contains a control character"),
    ("", "is empty"),
    ("m" * 201, "is 201 bytes long (at most 200)"),
    ("é" * 101, "is 202 bytes long (at most 200)"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_bad_names_are_named_with_their_problem(name: str, problem: str) -> None:
    found = filename_problem(name)
    assert found is not None and found.startswith(problem)
    with pytest.raises(BadRequest) as info:
        check_filename(name, "model")
    assert str(info.value).startswith("model file name ")
    assert problem in str(info.value)


@pytest.mark.parametrize("name", ["model.pkl", "net.onnx", "code.tar.gz", "a..b.json", ".hidden", "m" * 200])
def test_plain_names_pass(name: str) -> None:
    assert check_filename(name) == name


@pytest.fixture
def control(settings: Settings) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings) as running:
        yield running


def _admin(control: RunningControlPlane) -> dict[str, str]:
    return {"authorization": f"Bearer {control.admin_token}"}


def _upload(control: RunningControlPlane, data: bytes) -> str:
    r = httpx.post(f"{control.url}/api/artifacts", content=data, headers=_admin(control), timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["sha256"])


@pytest.mark.slow
def test_registration_and_endpoints_refuse_bad_names(control: RunningControlPlane) -> None:
    sha = _upload(control, b"model bytes")
    for name, problem in [("../../model.pkl", "contains '/'"), ("..", "reference to a folder"),
                          ("x" * 300, "is 300 bytes long"), ("a\x00b", "NUL")]:  # fmt: skip
        body = {"name": "m", "framework": "sklearn", "artifact_sha256": sha, "filename": name}
        r = httpx.post(f"{control.url}/api/models", json=body, headers=_admin(control), timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("model file name ") and problem in r.json()["error"]
    assert httpx.get(f"{control.url}/api/models", headers=_admin(control), timeout=30).json() == []

    code = _upload(control, b"class Preprocess:\n    pass\n")
    for name in ("../evil.py", "/tmp/evil.py", "..", "sub\\evil.py"):
        spec = {"endpoint": "ep", "version": "1", "engine": "custom",
                "preprocess": {"sha256": code, "filename": name}}  # fmt: skip
        r = httpx.post(
            f"{control.url}/api/services/default/endpoints", json=spec, headers=_admin(control), timeout=30
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(f"preprocess file name {name!r}")
    ok = {
        "endpoint": "ep",
        "version": "1",
        "engine": "custom",
        "preprocess": {"sha256": code, "filename": "p.py"},
    }
    r = httpx.post(
        f"{control.url}/api/services/default/endpoints", json=ok, headers=_admin(control), timeout=30
    )
    assert r.status_code == 201, r.text


def _fetch(control: RunningControlPlane, cache_dir: Path, ref: ArtifactRef, sent: list[str]) -> Path:
    async def go() -> Path:
        async def count(request: httpx.Request) -> None:
            sent.append(request.url.path)

        async with httpx.AsyncClient(
            base_url=control.url, headers=_admin(control), event_hooks={"request": [count]}, timeout=30
        ) as http:
            return await ArtifactCache(cache_dir, http).path_for(ref)

    return asyncio.run(go())


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.slow
def test_the_replica_cache_never_writes_outside_its_folder(
    control: RunningControlPlane, tmp_path: Path
) -> None:
    """Refs as a database written before names were checked could hold them."""
    data = b"model bytes " * 100
    sha = _upload(control, data)
    replica = tmp_path / "replica"
    cache = replica / "cache"
    sent: list[str] = []
    with pytest.raises(ModelLoadError) as info:
        _fetch(control, cache, ArtifactRef(sha256=sha, filename=".."), sent)
    assert str(info.value) == (
        f"artifact {sha}: file name '..' is a reference to a folder, not a file name; nothing was downloaded"
    )
    with pytest.raises(ModelLoadError, match="contains a NUL character"):
        _fetch(control, cache, ArtifactRef(sha256=sha, filename="m\x00.pkl"), sent)
    with pytest.raises(ModelLoadError, match=r"id '\.\./\.\./\.\./outside' is not a sha256"):
        _fetch(control, cache, ArtifactRef(sha256="../../../outside", filename="m.pkl"), sent)
    assert sent == []  # refused before asking the control plane
    assert _files(replica) == [] and not (tmp_path / "outside").exists()  # nothing created anywhere

    # a name with folders, registered before the checks, keeps working under its last part
    path = _fetch(control, cache, ArtifactRef(sha256=sha, filename="models/model.pkl"), sent)
    assert path == cache / "blobs" / sha / "model.pkl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert _files(replica) == [cache, cache / "blobs", cache / "blobs" / sha, path]
