"""Unpacking a user's code folder (sent as a ``.tar.gz``) without trusting it.

Members with absolute or ``..`` paths, links and device files are refused before anything
is written, and :func:`find_root` says which package (or single file) the archive holds.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from modelyard.errors import UserCodeError


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing absolute paths, ``..`` members, links and devices."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
                    raise UserCodeError(f"archive {archive.name!r}: unsafe member path {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise UserCodeError(
                        f"archive {archive.name!r}: member {m.name!r} is a link or special file"
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise UserCodeError(f"cannot extract preprocess archive {archive.name!r}: {exc}") from exc


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
