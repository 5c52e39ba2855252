"""What an artifact may be called: its sha256 and the file name it keeps on replicas.

Both end up in paths (``<store>/blobs/<sha[:2]>/<sha>`` on the control plane,
``<cache>/blobs/<sha>/<filename>`` on every replica), so both are checked where a caller
hands them in (400 naming the problem) and again where a replica writes, since a bad name
already in the database must not make a replica write outside its cache folder. The checks
are plain functions without I/O so the replica side can use them without the store.
"""

from __future__ import annotations

import re

from modelyard.errors import BadRequest

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

MAX_FILENAME_BYTES = 200
"""Longest file name (UTF-8 bytes). Filesystems stop at 255; the replica cache downloads to
``.<name>.<pid>.part`` beside the final name, which must fit as well."""

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def check_sha256(sha: str) -> str:
    """Reject anything but 64 lowercase hex digits (it becomes part of a path)."""
    if not SHA256_RE.match(sha):
        raise BadRequest(f"artifact id {sha!r} is not a sha256 (64 lowercase hex digits)")
    return sha


def filename_problem(name: str) -> str | None:
    """Why ``name`` cannot be an artifact's file name, or ``None`` when it can.

    A file name is one plain path component: no separators of any platform, no ``.``/``..``,
    no drive prefix, no NUL or other control characters, at most :data:`MAX_FILENAME_BYTES`.
    """
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if "/" in name or "\\" in name:
        sep = "/" if "/" in name else "\\"
        kind = "is an absolute path" if name.startswith(sep) else f"contains {sep!r}"
        return f"{kind} (a file name is a single path component, such as model.pkl)"
    if name in (".", ".."):
        return "is a reference to a folder, not a file name"
    if _DRIVE_RE.match(name):
        return "starts with a drive letter"
    if _CONTROL_RE.search(name):
        return "contains a control character"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_FILENAME_BYTES:
        return f"is {size} bytes long (at most {MAX_FILENAME_BYTES})"
    return None


def check_filename(name: str, what: str = "artifact") -> str:
    """``name`` if it is a valid artifact file name; :class:`BadRequest` naming the problem."""
    problem = filename_problem(name)
    if problem is not None:
        raise BadRequest(f"{what} file name {_shown(name)} {problem}")
    return name


def _shown(name: str) -> str:
    """The name for a message: quoted, escaped, shortened when huge."""
    return repr(name if len(name) <= 80 else name[:60] + "..." + name[-10:])
