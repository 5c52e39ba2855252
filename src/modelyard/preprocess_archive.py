"""Unpacking a user's code folder (a ``.tar.gz``, any tar, or a ``.zip``) without trusting it.

Members with absolute or ``..`` paths, links and device files are refused before anything
is written, and :func:`find_root` says which package (or single file) the archive holds.

Archives are also bounded (:class:`ArchiveLimits`): a 1 MB ``.tar.gz`` can hold 1 GiB of
zeros. Sizes declared in the headers are added up member by member and the archive is
refused as soon as their sum or the member count passes a limit, before that member's data
is read; the bytes really written are counted too, since a header is only a claim. The
control plane runs the same walk without writing (:func:`inspect_archive`) when code is
bound to an endpoint, so an oversized archive is refused there with 413 instead of failing
on every replica; replicas still enforce their own limits while extracting.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from modelyard.errors import BadRequest, PayloadTooLarge, UserCodeError

if TYPE_CHECKING:
    from modelyard.settings import Settings

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Most bytes (all files together, uncompressed) and members a code archive may hold."""

    max_bytes: int = 256 * 1024 * 1024
    max_files: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_bytes=settings.preprocess_archive_max_bytes,
            max_files=settings.preprocess_archive_max_files,
        )


class ArchiveRefused(Exception):
    """Why an archive is refused; ``too_large`` for a limit (413), else a malformed archive."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@dataclass
class _Member:
    name: str
    is_dir: bool
    size: int
    """Declared by the archive's header."""
    executable: bool
    open: Callable[[], IO[bytes]]
    """Opens the member's data (files only)."""


class ByteBudget:
    """Bytes really read so far, against ``limits.max_bytes``."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_bytes:
            raise ArchiveRefused(_too_big(self.limits), too_large=True)


def is_archive(source: Path | IO[bytes]) -> bool:
    """Whether ``source`` (a path or a seekable binary file, left at its start) is a tar (any
    compression) or zip archive: what replicas extract rather than import."""
    try:
        if zipfile.is_zipfile(source):
            return True
        _rewind(source)
        return tarfile.is_tarfile(source)
    except (OSError, EOFError):
        return False
    finally:
        _rewind(source)


def _rewind(source: Path | IO[bytes]) -> None:
    if not isinstance(source, Path):
        source.seek(0)


def _check_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or name.startswith(("/", "\\")) or "\\" in name or ".." in parts or "\x00" in name:
        raise ArchiveRefused(f"unsafe member path {name!r}")
    if PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRefused(f"unsafe member path {name!r}")


def _tar_members(tar: tarfile.TarFile) -> Iterator[_Member]:
    while (m := tar.next()) is not None:  # one header at a time: never all of them in memory
        _check_name(m.name)
        if not (m.isfile() or m.isdir()):
            raise ArchiveRefused(f"member {m.name!r} is a link or special file")
        member = m

        def opener(member: tarfile.TarInfo = member) -> IO[bytes]:
            f = tar.extractfile(member)
            assert f is not None  # a regular file always has data
            return f

        yield _Member(m.name, m.isdir(), 0 if m.isdir() else m.size, bool(m.mode & 0o111), opener)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        _check_name(info.filename)
        mode = info.external_attr >> 16  # Unix mode, when the writer recorded one
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRefused(f"member {info.filename!r} is a link or special file")
        is_dir = info.is_dir()

        def opener(info: zipfile.ZipInfo = info) -> IO[bytes]:
            return zf.open(info)

        yield _Member(info.filename, is_dir, 0 if is_dir else info.file_size, bool(mode & 0o111), opener)


def _walk(fileobj: IO[bytes], limits: ArchiveLimits, dest: Path | None) -> None:
    """Check every member against ``limits``; write them under ``dest`` when given."""
    if zipfile.is_zipfile(fileobj):
        fileobj.seek(0)
        with zipfile.ZipFile(fileobj) as zf:
            if len(zf.infolist()) > limits.max_files:
                raise ArchiveRefused(_too_many(limits), too_large=True)
            _extract(_zip_members(zf), limits, dest)
        return
    fileobj.seek(0)
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        _extract(_tar_members(tar), limits, dest)


def _too_many(limits: ArchiveLimits) -> str:
    return f"holds more than {limits.max_files} members (MODELYARD_PREPROCESS_ARCHIVE_MAX_FILES)"


def _too_big(limits: ArchiveLimits) -> str:
    return f"expands to more than {limits.max_bytes} bytes (MODELYARD_PREPROCESS_ARCHIVE_MAX_BYTES)"


def _extract(members: Iterator[_Member], limits: ArchiveLimits, dest: Path | None) -> None:
    count = declared = 0
    budget = ByteBudget(limits)
    root = dest.resolve() if dest is not None else None
    for member in members:
        count += 1
        if count > limits.max_files:
            raise ArchiveRefused(_too_many(limits), too_large=True)
        declared += member.size
        if declared > limits.max_bytes:
            raise ArchiveRefused(_too_big(limits), too_large=True)
        target = None
        if root is not None:
            target = root.joinpath(*PurePosixPath(member.name).parts)
            if target != root and root not in target.parents:
                raise ArchiveRefused(f"unsafe member path {member.name!r}")
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
        if member.is_dir:
            continue
        with member.open() as src:
            copy_limited(src, target, budget)
        if target is not None:
            os.chmod(target, 0o755 if member.executable else 0o644)


def copy_limited(src: IO[bytes], target: Path | None, budget: ByteBudget) -> None:
    """Copy ``src`` to ``target`` (or only read it, for ``None``), each chunk taken from
    ``budget`` before it is written: refused once the bytes really read pass the limit,
    whatever the headers said."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(target, "wb")) if target is not None else None
        while chunk := src.read(_CHUNK):
            budget.take(len(chunk))
            if out is not None:
                out.write(chunk)


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> None:
    """Extract a tar or zip archive into ``dest`` within ``limits``; :class:`UserCodeError` naming
    the member or the limit otherwise (what is already written is left for the caller to remove)."""
    try:
        with open(archive, "rb") as f:
            _walk(f, limits or ArchiveLimits(), dest)
    except ArchiveRefused as exc:
        raise UserCodeError(f"archive {archive.name!r}: {exc.message}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UserCodeError(f"cannot extract preprocess archive {archive.name!r}: {exc}") from exc


def inspect_archive(fileobj: IO[bytes], name: str, limits: ArchiveLimits) -> None:
    """Read a code archive as :func:`safe_extract` would, writing nothing: :class:`PayloadTooLarge`
    (413) over a limit, :class:`BadRequest` (400) for an unsafe or unreadable archive."""
    try:
        _walk(fileobj, limits, None)
    except ArchiveRefused as exc:
        message = f"preprocess archive {name!r}: {exc.message}"
        if exc.too_large:
            raise PayloadTooLarge(message) from None
        raise BadRequest(message) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise BadRequest(f"preprocess archive {name!r} is not a readable tar or zip archive: {exc}") from None


def find_root(folder: Path) -> Path:
    """The package folder (with ``__init__.py``) or single ``.py`` file in an extracted archive."""
    if (folder / "__init__.py").is_file():
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    dirs = [p for p in entries if p.is_dir()]
    if len(entries) == 1 and dirs and (dirs[0] / "__init__.py").is_file():
        return dirs[0]
    py_files = [p for p in entries if p.suffix == ".py"]
    if len(py_files) == 1 and not dirs:
        return py_files[0]
    raise UserCodeError(
        f"preprocess folder {folder.name!r} has no __init__.py (a folder must be a Python package)"
    )
