"""Optimistic concurrency on a service: ``If-Match: <revision>`` on service-scoped writes.

Readers learn a service's revision from ``Service.revision`` or from the ``ETag`` /
``x-modelyard-revision`` headers of ``GET /api/services/{s}/endpoints[/{key}]``. A writer that
changes something it read (merging options, say) sends that revision back as ``If-Match``;
the control plane checks it under the service's row lock, in the transaction that bumps it,
and answers 409 ``revision_conflict`` when another write came in between, so the writer
reads again and retries instead of silently undoing the other change.

:func:`check_expected_revision` is the core's check (no HTTP); :func:`if_match` is the
FastAPI dependency that parses the header, for every router with service-scoped writes.
"""

from __future__ import annotations

import re

from fastapi import Header

from modelyard.errors import BadRequest, RevisionConflict

REVISION_HEADER = "x-modelyard-revision"
IF_MATCH_PATTERN = r'^(\*|(W/)?"?[0-9]{1,18}"?)$'
"""What ``If-Match`` may hold (the OpenAPI document says so too): ``*``, ``7``, ``"7"``, ``W/"7"``."""
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


def parse_if_match(value: str | None) -> int | None:
    """``7``, ``"7"`` or ``W/"7"`` → 7; absent or ``*`` → None (no check); anything else is 400."""
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.fullmatch(value.strip())
    if match is None:
        raise BadRequest(f'If-Match {value!r} is not a service revision (a number such as "7", or *)')
    return int(match.group(1))


def if_match(
    value: str = Header(  # absent: None (not in the OpenAPI type: a header is a string or absent)
        default=None,
        alias="If-Match",
        description="The service revision this change was made against; 409 if the service moved on.",
        json_schema_extra={"pattern": IF_MATCH_PATTERN},
    ),
) -> int | None:
    """FastAPI dependency: the expected revision from ``If-Match``, or None."""
    return parse_if_match(value)


def revision_headers(revision: int) -> dict[str, str]:
    """``ETag`` and ``x-modelyard-revision`` for an answer read at ``revision``."""
    return {"etag": f'"{revision}"', REVISION_HEADER: str(revision)}


def check_expected_revision(service: str, current: int, expected: int | None) -> None:
    """Raise :class:`RevisionConflict` when ``expected`` is given and is not ``current``.

    Call with the service row locked, before changing anything.
    """
    if expected is not None and expected != current:
        raise RevisionConflict(
            f"service {service!r} changed since revision {expected} (it is at revision {current}): "
            "another change came in first; read it again and retry",
            current=current,
        )
