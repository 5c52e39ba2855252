"""Preprocess code archives are bounded: bytes and members, from the headers and while writing.

Real archives built here: a gzip bomb (a few KB of ``.tar.gz`` holding MBs of zeros), a zip
bomb, an archive of many empty files, one whose header claims a 1 GiB member, and a zip whose
central directory understates its member's size.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import run_control_plane

from modelyard.artifacts import ArtifactStore
from modelyard.config import ArtifactRef
from modelyard.control.api import create_control_app
from modelyard.errors import BadRequest, PayloadTooLarge, UserCodeError
from modelyard.preprocess import UserCode
from modelyard.preprocess_archive import (
    ArchiveLimits,
    ArchiveRefused,
    ByteBudget,
    copy_limited,
    inspect_archive,
    safe_extract,
)
from modelyard.settings import Settings

MIB = 1024 * 1024
SMALL = ArchiveLimits(max_bytes=1 * MIB, max_files=20)
INIT = b"class Preprocess:\n    def preprocess(self, body):\n        return body\n"


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in chunks (so a bomb is built without holding it in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def tar_bomb(path: Path, zeros: int) -> Path:
    """A code package whose ``pkg/data.bin`` is ``zeros`` bytes of zeros, gzipped."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/__init__.py")
        info.size = len(INIT)
        tar.addfile(info, io.BytesIO(INIT))
        info = tarfile.TarInfo("pkg/data.bin")
        info.size = zeros
        tar.addfile(info, _Zeros(zeros))
    return path


def zip_bomb(path: Path, zeros: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", INIT)
        with zf.open("pkg/data.bin", "w") as out:
            for _ in range(zeros // MIB):
                out.write(bytes(MIB))
    return path


def written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def folder_config(make_config: Callable[..., Any], filename: str) -> Any:
    ref = ArtifactRef(sha256="1" * 64, filename=filename, kind="folder")
    return make_config("custom", preprocess=ref)


def test_a_gzip_bomb_is_refused_before_its_member_is_written(tmp_path: Path) -> None:
    archive = tar_bomb(tmp_path / "code.tar.gz", 20 * MIB)
    assert archive.stat().st_size < 100_000  # KBs on the wire, 20 MiB unpacked
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserCodeError) as info:
        safe_extract(archive, out, SMALL)
    assert str(info.value) == (
        "archive 'code.tar.gz': expands to more than 1048576 bytes (MODELYARD_PREPROCESS_ARCHIVE_MAX_BYTES)"
    )
    assert not (out / "pkg" / "data.bin").exists()  # refused from its header, before any data
    assert written(out) == len(INIT)


def test_within_the_limits_an_archive_loads(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    archive = tar_bomb(tmp_path / "code.tar.gz", MIB - len(INIT))
    user = UserCode.load(archive, folder_config(make_config, "code.tar.gz"), limits=SMALL)
    try:
        assert user.source.name == "pkg"
        assert (user.source / "data.bin").stat().st_size == MIB - len(INIT)
    finally:
        user.unload()


def test_user_code_load_refuses_a_bomb_and_leaves_no_folder(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    def unpacked() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("modelyard-usercode-*"))

    before = unpacked()
    archive = tar_bomb(tmp_path / "code.tar.gz", 4 * MIB)
    with pytest.raises(UserCodeError, match=r"expands to more than 1048576 bytes"):
        UserCode.load(archive, folder_config(make_config, "code.tar.gz"), limits=SMALL)
    assert unpacked() - before == set()


def test_a_header_claiming_a_huge_member_is_refused_without_reading_it(tmp_path: Path) -> None:
    """Default limits (256 MiB): a member header says 1 GiB; nothing is decompressed for it."""
    info = tarfile.TarInfo("pkg/huge.bin")
    info.size = 1024 * MIB
    archive = tmp_path / "liar.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf() + bytes(4096)))  # the data is not even there
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserCodeError, match=r"expands to more than 268435456 bytes"):
        safe_extract(archive, out)
    assert list(out.iterdir()) == []


def test_too_many_members(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(50):
            tar.addfile(tarfile.TarInfo(f"pkg/m{i}.py"), io.BytesIO(b""))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        UserCodeError, match=r"holds more than 20 members \(MODELYARD_PREPROCESS_ARCHIVE_MAX_FILES\)"
    ):
        safe_extract(archive, out, SMALL)
    assert len(list((out / "pkg").iterdir())) == 20


def test_a_zip_bomb_is_refused(tmp_path: Path) -> None:
    archive = zip_bomb(tmp_path / "code.zip", 20 * MIB)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserCodeError, match=r"archive 'code.zip': expands to more than 1048576 bytes"):
        safe_extract(archive, out, SMALL)
    assert written(out) <= SMALL.max_bytes


def test_a_zip_that_understates_its_sizes_writes_no_more_than_the_limit(tmp_path: Path) -> None:
    """The central directory says 10 bytes; the deflated data is 8 MiB of zeros."""
    archive = zip_bomb(tmp_path / "liar.zip", 8 * MIB)
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        member = zf.getinfo("pkg/data.bin")
    # patch "uncompressed size" in the local header (offset 22) and in its central record (24)
    struct.pack_into("<I", raw, member.header_offset + 22, 10)
    name = b"pkg/data.bin"
    central = raw.rindex(b"PK\x01\x02")  # the last central record is the last member's
    assert raw[central + 46 : central + 46 + len(name)] == name
    struct.pack_into("<I", raw, central + 24, 10)
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserCodeError, match=r"liar\.zip"):
        safe_extract(archive, out, SMALL)
    assert written(out) <= SMALL.max_bytes


def test_zip_packages_load_like_tar_ones(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/__init__.py", INIT)
    user = UserCode.load(archive, folder_config(make_config, "code.zip"))
    try:
        assert user.source.name == "pkg"
    finally:
        user.unload()


@pytest.mark.parametrize("member", ["../evil.py", "/etc/evil.py", "pkg\\..\\evil.py"])
def test_unsafe_zip_members_are_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, "x = 1\n")
    with pytest.raises(UserCodeError, match="unsafe member path"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


def test_zip_links_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("pkg/__init__.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserCodeError, match=r"member 'pkg/__init__\.py' is a link or special file"):
        safe_extract(archive, tmp_path / "out")


def test_bytes_are_counted_while_copying_whatever_the_headers_said(tmp_path: Path) -> None:
    """The copy itself stops at the limit: a reader handing out more than declared gets no further."""
    target = tmp_path / "member.bin"
    budget = ByteBudget(SMALL)
    with pytest.raises(ArchiveRefused) as info:
        copy_limited(io.BytesIO(bytes(3 * MIB)), target, budget)
    assert info.value.too_large
    assert target.stat().st_size <= SMALL.max_bytes


def test_control_plane_inspection_is_413_or_400_and_writes_nothing(tmp_path: Path) -> None:
    bomb = tar_bomb(tmp_path / "code.tar.gz", 4 * MIB)
    with (
        open(bomb, "rb") as f,
        pytest.raises(PayloadTooLarge, match=r"preprocess archive 'code.tar.gz': expands"),
    ):
        inspect_archive(f, "code.tar.gz", SMALL)
    with pytest.raises(BadRequest, match=r"'junk.tar.gz' is not a readable tar or zip archive"):
        inspect_archive(io.BytesIO(b"not an archive at all"), "junk.tar.gz", SMALL)


def test_the_store_checks_code_archives_as_replicas_unpack_them(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"), archive_limits=SMALL)
    bomb_sha, _ = store.put_file(tar_bomb(tmp_path / "code.tar.gz", 4 * MIB))
    with pytest.raises(PayloadTooLarge, match=r"'code.tar.gz': expands to more than 1048576 bytes"):
        store.check_code(ArtifactRef(sha256=bomb_sha, filename="code.tar.gz", kind="folder"))
    # the same bytes named .py are imported, not unpacked: nothing to check but the name
    store.check_code(ArtifactRef(sha256=bomb_sha, filename="code.py"))
    ok_sha, _ = store.put_file(tar_bomb(tmp_path / "ok.tar.gz", 1000))
    store.check_code(ArtifactRef(sha256=ok_sha, filename="ok.tar.gz", kind="folder"))
    plain_sha, _ = store.put_bytes(b"plain bytes")
    with pytest.raises(BadRequest, match="not a readable tar or zip"):
        store.check_code(ArtifactRef(sha256=plain_sha, filename="code.tgz", kind="folder"))


@pytest.mark.slow
def test_binding_an_oversized_archive_to_an_endpoint_is_413(settings: Settings, tmp_path: Path) -> None:
    limited = settings.model_copy(
        update={"preprocess_archive_max_bytes": SMALL.max_bytes, "preprocess_archive_max_files": 20}
    )
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tar:
        for i in range(50):
            tar.addfile(tarfile.TarInfo(f"pkg/m{i}.py"), io.BytesIO(b""))
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("../evil.py"), io.BytesIO(b""))
    with run_control_plane(limited) as control:
        admin = {"authorization": f"Bearer {control.admin_token}"}

        def bind(archive: Path) -> httpx.Response:
            r = httpx.post(f"{control.url}/api/artifacts", content=archive.read_bytes(), headers=admin)
            assert r.status_code == 201, r.text
            ref = {"sha256": r.json()["sha256"], "filename": archive.name, "kind": "folder"}
            spec = {"endpoint": "ep", "version": "1", "engine": "custom", "preprocess": ref}
            return httpx.post(f"{control.url}/api/services/default/endpoints", json=spec, headers=admin)

        for archive, status, message in [
            (tar_bomb(tmp_path / "bomb.tar.gz", 20 * MIB), 413,
             "preprocess archive 'bomb.tar.gz': expands to more than 1048576 bytes "
             "(MODELYARD_PREPROCESS_ARCHIVE_MAX_BYTES)"),
            (many, 413, "preprocess archive 'many.tar.gz': holds more than 20 members "
             "(MODELYARD_PREPROCESS_ARCHIVE_MAX_FILES)"),
            (evil, 400, "preprocess archive 'evil.tar.gz': unsafe member path '../evil.py'"),
        ]:  # fmt: skip
            r = bind(archive)
            assert (r.status_code, r.json()["error"]) == (status, message)
        assert httpx.get(f"{control.url}/api/services/default/endpoints", headers=admin).json() == []
        assert bind(tar_bomb(tmp_path / "ok.tar.gz", 1000)).status_code == 201


@pytest.mark.slow
def test_a_replica_unpacks_within_its_own_settings(settings: Settings, tmp_path: Path) -> None:
    """The control plane (default limits) accepts 2 MiB of code; a replica limited to 1 MiB by its
    settings refuses to unpack it, and says why in its status."""
    from tests.servers import free_port, run_uvicorn_in_thread
    from tests.serving.helpers import status_of, wait_for

    from modelyard.server import create_inference_app

    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        code = b"class Preprocess:\n    def process(self, data, state, collect=None):\n        return 'ok'\n"
        info = tarfile.TarInfo("pkg/__init__.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
        info = tarfile.TarInfo("pkg/data.bin")
        info.size = 2 * MIB
        tar.addfile(info, _Zeros(2 * MIB))
    port = free_port()
    with run_uvicorn_in_thread(create_control_app(settings), port):
        control_url = f"http://127.0.0.1:{port}"
        admin = {"authorization": f"Bearer {settings.token_file().read_text().strip()}"}
        r = httpx.post(f"{control_url}/api/artifacts", content=archive.read_bytes(), headers=admin)
        ref = {"sha256": r.json()["sha256"], "filename": "code.tar.gz", "kind": "folder"}
        spec = {"endpoint": "big", "version": "1", "engine": "custom", "preprocess": ref}
        r = httpx.post(f"{control_url}/api/services/default/endpoints", json=spec, headers=admin)
        assert r.status_code == 201, r.text
        replica = settings.model_copy(
            update={
                "home": tmp_path / "replica",
                "control_plane_url": control_url,
                "token": settings.token_file().read_text().strip(),
                "preprocess_archive_max_bytes": MIB,
            }
        )
        with run_uvicorn_in_thread(create_inference_app(replica)) as url:
            status = wait_for(lambda: (s := status_of(url, "big/1")) and s["state"] == "failed" and s, 30)
    assert "archive 'code.tar.gz': expands to more than 1048576 bytes" in status["error"]
